import * as api from '../api.js';
import { h, clear, section, table, field, errorBox, confirmButton } from '../dom.js';
import { lineChart, History } from '../chart.js';
import * as fmt from '../format.js';

export async function groupsPage(context) {
  const { main } = context;
  const list = h('div');
  main.append(h('h1', null, 'Consumer groups'), list);
  const refresh = async () => {
    const groups = await api.get('/api/groups');
    // Total lag needs each group's detail; a broker with very many groups shows the first 100.
    const details = await Promise.all(groups.slice(0, 100).map((g) =>
      api.get(`/api/groups/${api.seg(g.group_id)}`).catch(() => null)));
    if (!context.alive) return;
    const lag = new Map(details.filter(Boolean).map((d) => [d.group_id, d.total_lag]));
    clear(list).append(table([
      { label: 'Group', cell: (g) => h('a', { href: `#/groups/${encodeURIComponent(g.group_id)}` }, g.group_id) },
      { label: 'State', cell: (g) => g.state },
      { label: 'Protocol', cell: (g) => [g.protocol_type, g.protocol].filter(Boolean).join(' / ') || '–' },
      { label: 'Members', cell: (g) => g.members, num: true },
      { label: 'Total lag', cell: (g) => (lag.has(g.group_id) ? fmt.count(lag.get(g.group_id)) : '–'), num: true },
    ], groups, { testid: 'groups', empty: 'no consumer groups' }));
  };
  await refresh();
  context.every(5000, refresh);
}

// Lag samples per group, kept across page changes.
const lagHistories = new Map();

export async function groupPage(context, groupId) {
  const { main } = context;
  const path = `/api/groups/${api.seg(groupId)}`;
  const history = lagHistories.get(groupId) || new History(120);
  lagHistories.set(groupId, history);
  const summary = h('div', { class: 'cards' });
  const members = h('div');
  const offsets = h('div');
  const chart = h('div');
  const status = h('div');
  let detail = await api.get(path);

  const show = () => {
    const sample = {};
    for (const o of detail.offsets) sample[`${o.topic}/${o.partition}`] = o.lag;
    sample.total = detail.total_lag;
    history.push(Date.now(), sample);
    clear(summary).append(
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'State'), h('div', { class: 'value', testid: 'group-state' }, detail.state)),
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'Members'), h('div', { class: 'value' }, detail.members.length)),
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'Total lag'), h('div', { class: 'value', testid: 'total-lag' }, fmt.count(detail.total_lag))),
    );
    clear(members).append(table([
      { label: 'Member', cell: (m) => m.member_id },
      { label: 'Client', cell: (m) => `${m.client_id} ${m.client_host}` },
      { label: 'Instance', cell: (m) => m.group_instance_id ?? '–' },
      { label: 'Assigned', cell: (m) => m.assignments.map((a) => `${a.topic}/${a.partition}`).join(', ') || '–' },
    ], detail.members, { testid: 'members', empty: 'no members (the group is empty)' }));
    const maxLag = Math.max(1, ...detail.offsets.map((o) => o.lag ?? 0));
    clear(offsets).append(table([
      { label: 'Topic', cell: (o) => h('a', { href: `#/topics/${encodeURIComponent(o.topic)}` }, o.topic) },
      { label: 'Partition', cell: (o) => o.partition, num: true },
      { label: 'Committed', cell: (o) => (o.committed_offset == null ? '–' : fmt.count(o.committed_offset)), num: true },
      { label: 'Log end', cell: (o) => fmt.count(o.log_end_offset), num: true },
      { label: 'Lag', cell: (o) => h('span', { testid: `lag-${o.topic}-${o.partition}` }, fmt.count(o.lag)), num: true },
      { label: '', cell: (o) => lagBar(o.lag ?? 0, maxLag) },
      { label: 'Member', cell: (o) => o.member_id ?? '–' },
    ], detail.offsets, { testid: 'group-offsets', empty: 'no committed offsets' }));
    // The chart: total lag and up to 7 partitions.
    const keys = Object.keys(sample).filter((k) => k !== 'total').slice(0, 7);
    clear(chart).append(lineChart(history.series(['total', ...keys], ['total', ...keys]),
      { title: 'Lag (messages)', format: (v) => fmt.count(Math.round(v)), testid: 'lag-chart' }));
  };
  show();

  main.append(
    h('h1', null, h('a', { href: '#/groups' }, 'Consumer groups'), ' / ', h('span', { testid: 'group-id' }, groupId)),
    summary,
    section('Lag per partition', offsets, chart),
    section('Members', members),
    resetOffsets(context, groupId, () => detail, async () => { detail = await api.get(path); show(); }),
    section('Danger zone', confirmButton('Delete group', `Delete group ${groupId} and its committed offsets?`, async () => {
      clear(status);
      try { await api.del(path); location.hash = '#/groups'; } catch (error) { status.append(errorBox(error)); }
    }, { testid: 'delete-group' }), status),
  );
  context.every(2000, async () => {
    const next = await api.get(path);
    if (!context.alive) return;
    detail = next;
    show();
  });
}

function lagBar(lag, max) {
  const bar = h('span', { class: 'bar' });
  bar.style.width = `${Math.round((lag / max) * 100)}%`;
  return h('span', { class: 'bar-track' }, bar);
}

// Reset offsets: a dry run shows the plan; "Apply" sends the same request without dry_run.
function resetOffsets(context, groupId, currentDetail, reload) {
  const topics = [...new Set(currentDetail().offsets.map((o) => o.topic))];
  const topic = h('select', { name: 'topic', testid: 'reset-topic' }, h('option', { value: '' }, 'every committed topic'),
    topics.map((t) => h('option', { value: t }, t)));
  const partitions = h('input', { name: 'partitions', placeholder: 'all, or 0,2', testid: 'reset-partitions' });
  const strategy = h('select', { name: 'strategy', testid: 'reset-strategy' },
    ['earliest', 'latest', 'timestamp', 'offset', 'shift'].map((s) => h('option', { value: s }, s)));
  const value = h('input', { name: 'value', placeholder: 'offset, shift (-3) or ms / 2024-01-31 12:00:00', testid: 'reset-value' });
  const plan = h('div', { testid: 'reset-plan' });
  const status = h('div');

  const build = () => {
    const body = { strategy: strategy.value };
    if (topic.value) body.topic = topic.value;
    const list = partitions.value.trim();
    if (list) {
      if (!topic.value) throw new Error('choose a topic to reset only some partitions');
      body.partitions = list.split(',').map((p) => Number(p.trim()));
      if (body.partitions.some((p) => !Number.isInteger(p) || p < 0)) throw new Error(`not a partition list: '${list}'`);
    }
    const v = value.value.trim();
    if (strategy.value === 'offset' || strategy.value === 'shift') {
      if (!/^-?\d+$/.test(v)) throw new Error(`${strategy.value} needs a whole number`);
      body[strategy.value] = Number(v);
    } else if (strategy.value === 'timestamp') {
      const ms = /^\d+$/.test(v) ? Number(v) : Date.parse(/Z$/.test(v) ? v : `${v.replace(' ', 'T')}Z`);
      if (Number.isNaN(ms)) throw new Error(`not a time: '${v}'`);
      body.timestamp_ms = ms;
    }
    return body;
  };

  const send = async (dryRun) => {
    clear(status);
    let body;
    try { body = build(); } catch (error) { status.append(errorBox(error.message)); return null; }
    try {
      return await api.post(`/api/groups/${api.seg(groupId)}/reset-offsets`, { ...body, dry_run: dryRun });
    } catch (error) { status.append(errorBox(error)); return null; }
  };

  const preview = async () => {
    clear(plan);
    const answer = await send(true);
    if (!answer) return;
    plan.append(
      h('h3', null, 'Plan (dry run: nothing changed yet)'),
      table([
        { label: 'Topic', cell: (p) => p.topic },
        { label: 'Partition', cell: (p) => p.partition, num: true },
        { label: 'Now', cell: (p) => (p.previous_offset == null ? '–' : fmt.count(p.previous_offset)), num: true },
        { label: 'New', cell: (p) => fmt.count(p.new_offset), num: true },
      ], answer.partitions, { testid: 'reset-plan-table', empty: 'nothing to reset' }),
      answer.partitions.length ? confirmButton('Apply these offsets', 'Move the group to these offsets?', async () => {
        const applied = await send(false);
        if (!applied) return;
        clear(plan).append(h('p', { class: 'ok', testid: 'reset-done' },
          `Reset ${applied.partitions.length} partition(s).`));
        await reload();
      }, { testid: 'reset-apply' }) : null);
  };
  // A changed input invalidates a plan already shown.
  for (const input of [topic, partitions, strategy, value]) input.addEventListener('input', () => clear(plan));

  return section('Reset offsets',
    h('p', { class: 'muted' }, 'Refused while the group has members (stop its consumers first), as Kafka\'s tool does.'),
    h('form', { class: 'inline-form', testid: 'reset-form', onsubmit: (event) => { event.preventDefault(); preview(); } },
      field('Topic', topic), field('Partitions', partitions), field('To', strategy), field('Value', value),
      h('button', { type: 'submit', testid: 'reset-preview' }, 'Preview (dry run)')),
    status, plan);
}
