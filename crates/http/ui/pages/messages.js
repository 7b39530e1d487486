// The message browser of a topic: by partition and offset range, by timestamp, by key or by
// message id (`GET /api/topics/{name}/messages?...`), and "follow", which polls each
// partition from where the last answer ended.

import * as api from '../api.js';
import { h, append, clear, section, field, errorBox } from '../dom.js';
import * as fmt from '../format.js';

const FOLLOW_INTERVAL_MS = 1000;
const MAX_SHOWN = 500;

export function messageBrowser(context, topic) {
  const path = `/api/topics/${api.seg(topic.name)}/messages`;
  const mode = h('select', { name: 'mode', testid: 'query-mode' },
    [['offset', 'Offset range'], ['timestamp', 'Timestamp'], ['key', 'Key'], ['message_id', 'Message id']]
      .map(([value, label]) => h('option', { value }, label)));
  const partition = h('select', { name: 'partition', testid: 'query-partition' },
    h('option', { value: '' }, 'all'),
    topic.partitions.map((p) => h('option', { value: String(p.partition) }, String(p.partition))));
  const offset = h('input', { name: 'offset', type: 'number', min: 0, placeholder: 'log start', testid: 'query-offset' });
  const endOffset = h('input', { name: 'end_offset', type: 'number', min: 0, placeholder: 'high watermark', testid: 'query-end-offset' });
  const timestamp = h('input', { name: 'timestamp', placeholder: '2024-01-31 12:00:00 or ms', testid: 'query-timestamp' });
  const key = h('input', { name: 'key', placeholder: 'key', testid: 'query-key' });
  const messageId = h('input', { name: 'message_id', placeholder: 'message id', testid: 'query-message-id' });
  const limit = h('input', { name: 'limit', type: 'number', min: 1, max: 1000, value: '50', testid: 'query-limit' });
  const follow = h('input', { type: 'checkbox', name: 'follow', testid: 'follow' });
  const fields = {
    offset: [field('From offset', offset), field('To offset (excl.)', endOffset)],
    timestamp: [field('At or after (UTC)', timestamp)],
    key: [field('Key', key)],
    message_id: [field('Message id', messageId)],
  };
  const modeFields = h('span', { class: 'mode-fields' });
  const showModeFields = () => append(clear(modeFields), fields[mode.value]);
  mode.addEventListener('change', showModeFields);
  showModeFields();

  const summary = h('div', { class: 'muted', testid: 'query-summary' });
  const status = h('div');
  const list = h('div', { class: 'messages', testid: 'messages' });
  let positions = new Map(); // partition -> next offset, for follow
  let followTimer = null;
  let shown = 0;

  const params = () => {
    const common = { partition: partition.value, limit: limit.value };
    switch (mode.value) {
      case 'timestamp': return { ...common, timestamp_ms: parseTime(timestamp.value) };
      case 'key': return { ...common, key: key.value };
      case 'message_id': return { ...common, message_id: messageId.value };
      default: return { ...common, offset: offset.value, end_offset: endOffset.value };
    }
  };

  const run = async () => {
    clear(status);
    stopFollow();
    let query;
    try { query = params(); } catch (error) { status.append(errorBox(error.message)); return; }
    try {
      const answer = await api.get(path + api.query(query));
      clear(list);
      shown = 0;
      addMessages(answer.messages);
      positions = new Map(answer.positions.map((p) => [p.partition, p.next_offset]));
      summary.textContent = describe(answer);
      if (follow.checked) startFollow();
    } catch (error) {
      clear(list);
      summary.textContent = '';
      status.append(errorBox(error));
    }
  };

  const addMessages = (messages) => {
    for (const message of messages) list.append(messageCard(message));
    shown += messages.length;
    while (list.childElementCount > MAX_SHOWN) list.firstElementChild.remove();
  };

  // Follow: from the end of the last answer (or from each partition's high watermark when
  // nothing was asked yet), every second, each partition on its own.
  const tick = async () => {
    if (!context.alive || !follow.checked) { stopFollow(); return; }
    if (positions.size === 0) {
      const partitions = await api.get(`/api/topics/${api.seg(topic.name)}/partitions`);
      for (const p of partitions) {
        if (partition.value === '' || Number(partition.value) === p.partition) positions.set(p.partition, p.high_watermark);
      }
    }
    for (const [p, next] of positions) {
      const answer = await api.get(path + api.query({ partition: p, offset: next, limit: 200 }));
      if (!context.alive || !follow.checked) return;
      addMessages(answer.messages);
      for (const position of answer.positions) positions.set(position.partition, position.next_offset);
    }
    summary.textContent = `following: ${shown} message(s) shown, next ${[...positions].map(([p, o]) => `p${p}@${o}`).join(' ')}`;
  };
  const startFollow = () => {
    stopFollow();
    followTimer = setInterval(() => tick().catch((error) => { clear(status).append(errorBox(error)); }), FOLLOW_INTERVAL_MS);
    context.timers.push(followTimer);
  };
  function stopFollow() { if (followTimer) clearInterval(followTimer); followTimer = null; }
  follow.addEventListener('change', () => { if (follow.checked) startFollow(); else stopFollow(); });

  const form = h('form', { class: 'query-form', testid: 'message-query',
    onsubmit: (event) => { event.preventDefault(); run(); } },
  field('Find by', mode), field('Partition', partition), modeFields, field('Limit', limit),
  h('button', { type: 'submit', class: 'primary', testid: 'query-run' }, 'Query'),
  h('label', { class: 'check' }, follow, 'Follow new messages'));
  return section('Messages', form, status, summary, list);
}

/** "2024-01-31 12:00:00" (UTC), an ISO date, or ms since the epoch. */
function parseTime(text) {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const iso = /Z|[+-]\d\d:?\d\d$/.test(trimmed) ? trimmed : `${trimmed.replace(' ', 'T')}Z`;
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) throw new Error(`not a time: '${text}' (use 2024-01-31 12:00:00, UTC, or ms since the epoch)`);
  return ms;
}

function describe(answer) {
  const next = answer.positions.map((p) => `p${p.partition}: next ${p.next_offset} of ${p.high_watermark}`).join(' · ');
  const skipped = answer.skipped_compressed_batches ? ` · ${answer.skipped_compressed_batches} compressed batch(es) skipped` : '';
  return `${answer.messages.length} message(s)${next ? ` · ${next}` : ''}${skipped}`;
}

function messageCard(m) {
  return h('article', { class: 'message', testid: 'message', 'data-partition': m.partition, 'data-offset': m.offset },
    h('div', { class: 'meta' },
      h('span', { testid: 'message-position' }, `partition ${m.partition} · offset ${m.offset}`),
      h('span', { testid: 'message-time' }, `${fmt.time(m.timestamp_ms)} (${m.timestamp_type})`),
      h('span', null, fmt.bytes(m.size_bytes))),
    h('div', { class: 'kv' }, h('b', null, 'key '),
      m.key == null ? h('em', { class: 'muted' }, 'null') : h('code', { testid: 'message-key' }, fmt.encodedText(m.key))),
    m.headers.length ? h('div', { class: 'kv' }, h('b', null, 'headers '),
      m.headers.map((header) => h('code', { class: 'header', testid: 'message-header' },
        `${header.key}=${header.value == null ? 'null' : fmt.encodedText(header.value)}`))) : null,
    fmt.bodyView(m.value, 'message-body'));
}
