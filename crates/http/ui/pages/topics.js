import * as api from '../api.js';
import { h, clear, section, table, field, errorBox, confirmButton } from '../dom.js';
import * as fmt from '../format.js';
import { messageBrowser } from './messages.js';

export async function topicsPage(context) {
  const { main } = context;
  const list = h('div');
  const status = h('div');
  const name = h('input', { name: 'name', required: true, placeholder: 'orders' });
  const partitions = h('input', { name: 'partitions', type: 'number', min: 1, value: '1' });
  const create = h('form', { class: 'inline-form', testid: 'create-topic', onsubmit: async (event) => {
    event.preventDefault();
    clear(status);
    try {
      await api.post('/api/topics', { name: name.value, partitions: Number(partitions.value) });
      location.hash = `#/topics/${encodeURIComponent(name.value)}`;
    } catch (error) { status.append(errorBox(error)); }
  } }, field('Name', name), field('Partitions', partitions), h('button', { type: 'submit' }, 'Create topic'));
  main.append(h('h1', null, 'Topics'), list, section('Create a topic', create, status));
  const refresh = async () => {
    const topics = await api.get('/api/topics');
    if (!context.alive) return;
    clear(list).append(table([
      { label: 'Name', cell: (t) => h('a', { href: `#/topics/${encodeURIComponent(t.name)}` }, t.name) },
      { label: 'Partitions', cell: (t) => t.partitions, num: true },
      { label: 'Messages', cell: (t) => fmt.count(t.messages), num: true },
      { label: 'Size', cell: (t) => fmt.bytes(t.size_bytes), num: true },
      { label: 'Internal', cell: (t) => (t.internal ? 'yes' : '') },
    ], topics, { testid: 'topics', empty: 'no topics' }));
  };
  await refresh();
  context.every(5000, refresh);
}

export async function topicPage(context, name) {
  const { main } = context;
  const path = `/api/topics/${api.seg(name)}`;
  const [topic, configs] = await Promise.all([api.get(path), api.get(`${path}/configs`)]);
  const partitionsBox = h('div');
  const status = h('div');
  const showPartitions = (partitions) => clear(partitionsBox).append(table([
    { label: 'Partition', cell: (p) => p.partition, num: true },
    { label: 'Log start', cell: (p) => fmt.count(p.log_start_offset), num: true },
    { label: 'Log end', cell: (p) => fmt.count(p.log_end_offset), num: true },
    { label: 'High watermark', cell: (p) => fmt.count(p.high_watermark), num: true },
    { label: 'Size', cell: (p) => fmt.bytes(p.size_bytes), num: true },
    { label: 'Segments', cell: (p) => p.segments, num: true },
    { label: 'Leader', cell: (p) => p.leader, num: true },
    { label: 'Replicas', cell: (p) => p.replicas.join(', ') },
  ], partitions, { testid: 'partitions' }));
  showPartitions(topic.partitions);
  const overridden = configs.filter((c) => c.source === 'topic_override');
  main.append(
    h('h1', null, h('a', { href: '#/topics' }, 'Topics'), ' / ', h('span', { testid: 'topic-name' }, topic.name)),
    section('Partitions', partitionsBox),
    messageBrowser(context, topic),
    section('Configuration', table([
      { label: 'Name', cell: (c) => h('span', { title: c.documentation || '' }, c.name) },
      { label: 'Value', cell: (c) => c.value ?? '–' },
      { label: 'Source', cell: (c) => c.source },
    ], overridden.concat(configs.filter((c) => c.source !== 'topic_override')), { testid: 'configs' })),
    section('Danger zone', confirmButton('Delete topic', `Delete ${topic.name} and all its messages?`, async () => {
      clear(status);
      try { await api.del(path); location.hash = '#/topics'; } catch (error) { status.append(errorBox(error)); }
    }, { testid: 'delete-topic' }), status),
  );
  context.every(5000, async () => {
    const partitions = await api.get(`${path}/partitions`);
    if (context.alive) showPartitions(partitions);
  });
}
