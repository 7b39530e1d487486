import * as api from '../api.js';
import { h, clear, section, table } from '../dom.js';

export async function clusterPage(context) {
  const { main } = context;
  const body = h('div');
  main.append(h('h1', null, 'Cluster'), body);
  const refresh = async () => {
    const cluster = await api.get('/api/cluster');
    if (!context.alive) return;
    const mode = cluster.clustered
      ? `metadata leader: node ${cluster.metadata_leader ?? 'unknown'}`
      : 'single node (no --peers)';
    clear(body).append(
      section(`Nodes (${cluster.nodes.length}) · ${mode}`, table([
        { label: 'Node', cell: (n) => n.node_id, num: true },
        { label: 'Kafka address', cell: (n) => n.kafka_address },
        { label: 'Cluster address', cell: (n) => n.cluster_address ?? '–' },
        { label: 'Metadata leader', cell: (n) => (n.is_metadata_leader ? 'yes' : '') },
        { label: 'This node', cell: (n) => (n.is_self ? 'yes' : '') },
      ], cluster.nodes, { testid: 'cluster-nodes', empty: 'no nodes registered yet' })),
    );
  };
  await refresh();
  context.every(3000, refresh);
}
