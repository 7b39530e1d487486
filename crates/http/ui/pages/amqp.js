import * as api from '../api.js';
import { h, clear, section, table, field, errorBox, confirmButton } from '../dom.js';
import * as fmt from '../format.js';

export async function queuesPage(context) {
  const { main } = context;
  const list = h('div');
  const status = h('div');
  const name = h('input', { name: 'name', required: true, placeholder: 'jobs' });
  const durable = h('input', { type: 'checkbox', name: 'durable', checked: true });
  const declare = h('form', { class: 'inline-form', testid: 'declare-queue', onsubmit: async (event) => {
    event.preventDefault();
    clear(status);
    try {
      await api.post('/api/queues', { name: name.value, durable: durable.checked });
      location.hash = `#/queues/${encodeURIComponent(name.value)}`;
    } catch (error) { status.append(errorBox(error)); }
  } }, field('Name', name), h('label', { class: 'check' }, durable, 'durable'), h('button', { type: 'submit' }, 'Declare queue'));
  main.append(h('h1', null, 'Queues'), list, section('Declare a queue', declare, status));
  const refresh = async () => {
    const queues = await api.get('/api/queues');
    if (!context.alive) return;
    clear(list).append(table([
      { label: 'Name', cell: (q) => h('a', { href: `#/queues/${encodeURIComponent(q.name)}` }, q.name) },
      { label: 'Type', cell: (q) => q.type },
      { label: 'Ready', cell: (q) => h('span', { testid: `ready-${q.name}` }, fmt.count(q.messages_ready)), num: true },
      { label: 'Unacked', cell: (q) => fmt.count(q.messages_unacked), num: true },
      { label: 'Total', cell: (q) => fmt.count(q.messages), num: true },
      { label: 'Consumers', cell: (q) => q.consumers, num: true },
      { label: 'Publish', cell: (q) => fmt.rate(q.message_stats.publish_per_sec), num: true },
      { label: 'Deliver', cell: (q) => fmt.rate(q.message_stats.deliver_per_sec), num: true },
      { label: 'Ack', cell: (q) => fmt.rate(q.message_stats.ack_per_sec), num: true },
    ], queues, { testid: 'queues', empty: 'no queues' }));
  };
  await refresh();
  context.every(3000, refresh);
}

export async function queuePage(context, name) {
  const { main } = context;
  const path = `/api/queues/${api.seg(name)}`;
  const stats = h('div', { class: 'cards' });
  const bindingsBox = h('div');
  const refresh = async () => {
    const [q, bindings] = await Promise.all([api.get(path), api.get('/api/bindings')]);
    if (!context.alive) return;
    const card = (label, value, testid) => h('div', { class: 'card' }, h('div', { class: 'label' }, label),
      h('div', { class: 'value', testid }, value));
    clear(stats).append(
      card('Ready', fmt.count(q.messages_ready), 'queue-ready'),
      card('Unacked', fmt.count(q.messages_unacked), 'queue-unacked'),
      card('Consumers', q.consumers, 'queue-consumers'),
      card('Publish', fmt.rate(q.message_stats.publish_per_sec)),
      card('Deliver', fmt.rate(q.message_stats.deliver_per_sec)),
      card('Type', `${q.type}${q.durable ? ', durable' : ''}${q.exclusive ? ', exclusive' : ''}${q.auto_delete ? ', auto-delete' : ''}`),
    );
    clear(bindingsBox).append(bindingTable(bindings.filter((b) => b.destination === name && b.destination_type === 'queue')));
  };
  await refresh();
  main.append(
    h('h1', null, h('a', { href: '#/queues' }, 'Queues'), ' / ', h('span', { testid: 'queue-name' }, name)),
    stats,
    getMessages(path, refresh),
    publishForm({ fixedExchange: '', routingKey: name, after: refresh }),
    moveMessages(path, refresh),
    section('Bindings', bindingsBox),
    purgeAndDelete(path, name, refresh),
  );
  context.every(3000, refresh);
}

function getMessages(path, after) {
  const count = h('input', { type: 'number', name: 'count', min: 1, max: 1000, value: '5', testid: 'get-count' });
  const mode = h('select', { name: 'ack_mode', testid: 'get-mode' },
    h('option', { value: 'requeue' }, 'Peek (requeue)'), h('option', { value: 'ack' }, 'Take (ack: removes them)'));
  const out = h('div', { testid: 'got-messages' });
  const form = h('form', { class: 'inline-form', testid: 'get-form', onsubmit: async (event) => {
    event.preventDefault();
    clear(out);
    try {
      const messages = await api.post(`${path}/get`, { count: Number(count.value), ack_mode: mode.value });
      out.append(h('p', { class: 'muted' }, `${messages.length} message(s)`), ...messages.map(queueMessage));
      await after();
    } catch (error) { out.append(errorBox(error)); }
  } }, field('Count', count), field('Mode', mode), h('button', { type: 'submit', testid: 'get-run' }, 'Get messages'));
  return section('Get messages', form, out);
}

function queueMessage(m) {
  const props = Object.entries(m.properties || {}).filter(([k]) => k !== 'headers');
  const headers = m.properties?.headers;
  return h('article', { class: 'message', testid: 'queue-message' },
    h('div', { class: 'meta' },
      h('span', null, `exchange '${m.exchange}'`), h('span', null, `routing key '${m.routing_key}'`),
      h('span', null, m.redelivered ? 'redelivered' : 'first delivery'),
      h('span', null, `${m.message_count} left`), h('span', null, fmt.bytes(m.payload?.size))),
    props.length ? h('div', { class: 'kv' }, h('b', null, 'properties '),
      props.map(([k, v]) => h('code', { class: 'header' }, `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`))) : null,
    headers ? h('div', { class: 'kv' }, h('b', null, 'headers '), h('pre', { class: 'inline' }, JSON.stringify(headers, null, 2))) : null,
    fmt.bodyView(m.payload, 'queue-message-body'));
}

/** Publish through an exchange (fixed, or chosen from the list). */
function publishForm({ fixedExchange, exchanges, routingKey = '', after }) {
  const exchange = fixedExchange != null
    ? null
    : h('select', { name: 'exchange', testid: 'publish-exchange' },
      exchanges.map((e) => h('option', { value: e.name }, e.name === '' ? '(default)' : e.name)));
  const key = h('input', { name: 'routing_key', value: routingKey, testid: 'publish-routing-key' });
  const payload = h('textarea', { name: 'payload', rows: 3, testid: 'publish-payload', placeholder: 'message body' });
  const contentType = h('input', { name: 'content_type', placeholder: 'text/plain', testid: 'publish-content-type' });
  const messageId = h('input', { name: 'message_id', placeholder: 'optional', testid: 'publish-message-id' });
  const headers = h('input', { name: 'headers', placeholder: '{"a": 1}', testid: 'publish-headers' });
  const persistent = h('input', { type: 'checkbox', name: 'persistent', checked: true });
  const out = h('div', { testid: 'publish-result' });
  const form = h('form', { class: 'stack-form', testid: 'publish-form', onsubmit: async (event) => {
    event.preventDefault();
    clear(out);
    const properties = { delivery_mode: persistent.checked ? 2 : 1 };
    if (contentType.value) properties.content_type = contentType.value;
    if (messageId.value) properties.message_id = messageId.value;
    if (headers.value.trim()) {
      try { properties.headers = JSON.parse(headers.value); } catch (error) {
        out.append(errorBox(`headers are not JSON: ${error.message}`));
        return;
      }
    }
    const name = fixedExchange != null ? fixedExchange : exchange.value;
    try {
      const answer = await api.post(`/api/exchanges/${api.seg(name === '' ? 'amq.default' : name)}/publish`, {
        routing_key: key.value, payload: payload.value, payload_encoding: 'string', properties,
      });
      out.append(answer.routed
        ? h('p', { class: 'ok' }, 'Published (routed to a queue).')
        : h('p', { class: 'warn' }, 'Published, but it routed to no queue (dropped).'));
      if (after) await after();
    } catch (error) { out.append(errorBox(error)); }
  } },
  exchange ? field('Exchange', exchange) : null,
  field('Routing key', key), field('Payload', payload),
  h('div', { class: 'inline-form' }, field('Content type', contentType), field('Message id', messageId),
    field('Headers (JSON)', headers), h('label', { class: 'check' }, persistent, 'persistent')),
  h('button', { type: 'submit', class: 'primary', testid: 'publish-run' }, 'Publish'));
  return section('Publish a message', form, out);
}

function moveMessages(path, after) {
  const exchange = h('input', { name: 'exchange', placeholder: 'from x-death', testid: 'move-exchange' });
  const key = h('input', { name: 'routing_key', placeholder: 'from x-death', testid: 'move-routing-key' });
  const count = h('input', { name: 'count', type: 'number', min: 1, placeholder: 'all', testid: 'move-count' });
  const out = h('div', { testid: 'move-result' });
  const form = h('form', { class: 'inline-form', testid: 'move-form', onsubmit: async (event) => {
    event.preventDefault();
    clear(out);
    const body = {};
    if (exchange.value) body.exchange = exchange.value;
    if (key.value) body.routing_key = key.value;
    if (count.value) body.count = Number(count.value);
    try {
      const answer = await api.post(`${path}/move`, body);
      out.append(h('p', { class: 'ok' }, `Moved ${answer.moved}, skipped ${answer.skipped}.`));
      await after();
    } catch (error) { out.append(errorBox(error)); }
  } }, field('Exchange', exchange), field('Routing key', key), field('Count', count),
  h('button', { type: 'submit', testid: 'move-run' }, 'Move messages'));
  return section('Move messages',
    h('p', { class: 'muted' }, 'Without an exchange, each dead-lettered message goes back to the exchange and routing key of its x-death entry.'),
    form, out);
}

function purgeAndDelete(path, name, after) {
  const out = h('div', { testid: 'purge-result' });
  return section('Purge and delete',
    h('div', { class: 'actions' },
      confirmButton('Purge', `Drop every ready message of ${name}?`, async () => {
        clear(out);
        try {
          const answer = await api.post(`${path}/purge`);
          out.append(h('p', { class: 'ok' }, `Purged ${answer.messages_purged} message(s).`));
          await after();
        } catch (error) { out.append(errorBox(error)); }
      }, { testid: 'purge' }),
      confirmButton('Delete queue', `Delete ${name} and its messages?`, async () => {
        clear(out);
        try { await api.del(path); location.hash = '#/queues'; } catch (error) { out.append(errorBox(error)); }
      }, { testid: 'delete-queue' })),
    out);
}

function bindingTable(bindings) {
  return table([
    { label: 'Source', cell: (b) => (b.source === '' ? '(default)' : b.source) },
    { label: 'Destination', cell: (b) => `${b.destination} (${b.destination_type})` },
    { label: 'Routing key', cell: (b) => b.routing_key },
    { label: 'Arguments', cell: (b) => (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : '') },
  ], bindings, { testid: 'bindings', empty: 'no bindings' });
}

export async function exchangesPage(context) {
  const { main } = context;
  const [exchanges, bindings] = await Promise.all([api.get('/api/exchanges'), api.get('/api/bindings')]);
  const status = h('div');
  const name = h('input', { name: 'name', required: true, placeholder: 'events' });
  const type = h('select', { name: 'type' }, ['direct', 'fanout', 'topic', 'headers'].map((t) => h('option', { value: t }, t)));
  const declare = h('form', { class: 'inline-form', testid: 'declare-exchange', onsubmit: async (event) => {
    event.preventDefault();
    clear(status);
    try { await api.post('/api/exchanges', { name: name.value, type: type.value, durable: true }); location.reload(); } catch (error) { status.append(errorBox(error)); }
  } }, field('Name', name), field('Type', type), h('button', { type: 'submit' }, 'Declare exchange'));
  main.append(
    h('h1', null, 'Exchanges'),
    section(`Exchanges (${exchanges.length})`, table([
      { label: 'Name', cell: (e) => (e.name === '' ? '(default)' : e.name) },
      { label: 'Type', cell: (e) => e.type },
      { label: 'Features', cell: (e) => [e.durable && 'durable', e.auto_delete && 'auto-delete', e.internal && 'internal'].filter(Boolean).join(', ') },
      { label: 'Bindings', cell: (e) => bindings.filter((b) => b.source === e.name).length, num: true },
      { label: '', cell: (e) => (e.name.startsWith('amq.') || e.name === '' ? '' : confirmButton('Delete', `Delete exchange ${e.name}?`, async () => {
        clear(status);
        try { await api.del(`/api/exchanges/${api.seg(e.name)}`); location.reload(); } catch (error) { status.append(errorBox(error)); }
      }, { testid: `delete-exchange-${e.name}` })) },
    ], exchanges, { testid: 'exchanges' }), status),
    publishForm({ fixedExchange: null, exchanges: exchanges.filter((e) => !e.internal) }),
    section('Bindings', bindingTable(bindings)),
    section('Declare an exchange', declare),
  );
}
