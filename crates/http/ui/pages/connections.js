import * as api from '../api.js';
import { h, clear, section, table } from '../dom.js';
import * as fmt from '../format.js';

export async function connectionsPage(context) {
  const { main } = context;
  const body = h('div');
  main.append(h('h1', null, 'Connections'), body);
  const refresh = async () => {
    const [connections, channels] = await Promise.all([api.get('/api/connections'), api.get('/api/channels')]);
    if (!context.alive) return;
    clear(body).append(
      section(`Client connections (${connections.length})`, table([
        { label: 'Id', cell: (c) => c.id, num: true },
        { label: 'Protocol', cell: (c) => c.protocol },
        { label: 'Peer', cell: (c) => c.peer },
        { label: 'User', cell: (c) => c.user ?? '–' },
        { label: 'Client', cell: (c) => c.client ?? '–' },
        { label: 'Connected', cell: (c) => fmt.time(c.connected_at_ms) },
        { label: 'Channels', cell: (c) => c.channels, num: true },
      ], connections, { testid: 'connections', empty: 'no connections' })),
      section(`AMQP channels (${channels.length})`, table([
        { label: 'Connection', cell: (c) => c.connection, num: true },
        { label: 'Channel', cell: (c) => c.channel, num: true },
        { label: 'User', cell: (c) => c.user },
        { label: 'Consumers', cell: (c) => c.consumers, num: true },
        { label: 'Unacked', cell: (c) => c.messages_unacked, num: true },
        { label: 'Prefetch', cell: (c) => c.prefetch_count, num: true },
        { label: 'In tx', cell: (c) => (c.in_transaction ? 'yes' : 'no') },
      ], channels, { testid: 'channels', empty: 'no channels' })),
    );
  };
  await refresh();
  context.every(3000, refresh);
}
