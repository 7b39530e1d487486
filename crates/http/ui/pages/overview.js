import * as api from '../api.js';
import { h, clear, section, table } from '../dom.js';
import { lineChart, History } from '../chart.js';
import * as fmt from '../format.js';

// Kept across page changes, so coming back shows the recent past.
const history = new History(120);

export async function overviewPage(context) {
  const { main } = context;
  const cards = h('div', { class: 'cards', testid: 'overview-cards' });
  const charts = h('div', { class: 'charts' });
  const details = h('div', { class: 'grid2' });
  main.append(h('h1', null, 'Overview'), cards, charts, details);

  const refresh = async () => {
    const o = await api.get('/api/overview');
    if (!context.alive) return;
    const t = o.traffic;
    history.push(Date.now(), {
      min: t.messages_in_per_sec, mout: t.messages_out_per_sec,
      bin: t.bytes_in_per_sec, bout: t.bytes_out_per_sec,
    });
    clear(cards).append(
      card('Version', o.version, `up ${fmt.duration(o.uptime_ms)}`),
      card('Messages in', fmt.rate(t.messages_in_per_sec), `${fmt.count(t.messages_in_total)} total`, 'messages-in'),
      card('Messages out', fmt.rate(t.messages_out_per_sec), `${fmt.count(t.messages_out_total)} total`, 'messages-out'),
      card('Topics', fmt.count(o.counts.topics), `${fmt.count(o.counts.partitions)} partitions`, 'topics'),
      card('Groups', fmt.count(o.counts.groups), null, 'groups'),
      card('Queues', fmt.count(o.counts.queues), `${fmt.count(o.counts.exchanges)} exchanges`, 'queues'),
      card('Connections', fmt.count(o.connections.kafka + o.connections.amqp),
        `kafka ${o.connections.kafka} · amqp ${o.connections.amqp}`, 'connections'),
      card('Disk free', fmt.bytes(o.disk.free_bytes), `data ${fmt.bytes(o.disk.data_dir_bytes)}`, 'disk'),
      card('Memory', fmt.bytes(o.memory.rss_bytes), `queued ${fmt.bytes(o.memory.queued_message_bytes)}`),
    );
    clear(charts).append(
      lineChart(history.series(['min', 'mout'], ['in', 'out']),
        { title: 'Messages per second', format: (v) => fmt.rate(v, ''), testid: 'chart-messages' }),
      lineChart(history.series(['bin', 'bout'], ['in', 'out']),
        { title: 'Bytes per second', format: (v) => fmt.bytes(v), testid: 'chart-bytes' }),
    );
    clear(details).append(
      section('Alarms', o.alarms.length
        ? h('ul', { class: 'alarms', testid: 'alarms' }, o.alarms.map((a) => h('li', { class: 'alarm' }, `${a.kind}: ${a.detail}`)))
        : h('p', { class: 'ok', testid: 'alarms' }, 'No alarms')),
      section('Nodes', table([
        { label: 'Node', cell: (n) => `${n.node_id}${n.is_self ? ' (this)' : ''}` },
        { label: 'Host', cell: (n) => n.host },
        { label: 'Kafka port', cell: (n) => n.kafka_port, num: true },
      ], o.nodes)),
      section('Listeners', table([
        { label: 'Protocol', cell: (l) => l.protocol },
        { label: 'Address', cell: (l) => l.address },
      ], o.listeners)),
      section('Disk', h('dl', null,
        h('dt', null, 'Data directory'), h('dd', null, o.disk.data_dir),
        h('dt', null, 'Used by data'), h('dd', null, fmt.bytes(o.disk.data_dir_bytes)),
        h('dt', null, 'Free / total'), h('dd', null, `${fmt.bytes(o.disk.free_bytes)} / ${fmt.bytes(o.disk.total_bytes)}`),
        h('dt', null, 'Free limit'), h('dd', null, fmt.bytes(o.disk.free_limit_bytes)))),
    );
  };
  await refresh();
  context.every(2000, refresh);
}

function card(label, value, note, testid) {
  return h('div', { class: 'card', testid: testid && `card-${testid}` },
    h('div', { class: 'label' }, label), h('div', { class: 'value' }, value),
    note ? h('div', { class: 'note' }, note) : null);
}
