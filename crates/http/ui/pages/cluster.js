import * as api from '../api.js';
import { h, clear, section, table, errorBox, confirmButton } from '../dom.js';

export async function clusterPage(context) {
  const { main } = context;
  const body = h('div');
  const status = h('div');
  main.append(h('h1', null, 'Cluster'), body, status);
  const refresh = async () => {
    const cluster = await api.get('/api/cluster');
    // Re-rendering would close a removal question the user has not answered yet.
    if (!context.alive || body.querySelector('.confirm .question')) return;
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
        { label: 'Connected', cell: (n) => (n.connected ? 'yes' : 'no') },
        // Refused (409) while the node hosts replicas: reassign them first.
        { label: '', cell: (n) => (!cluster.clustered || n.is_self ? '' : confirmButton('Remove', `Remove node ${n.node_id} from the cluster?`, async () => {
          clear(status);
          try { await api.del(`/api/cluster/nodes/${n.node_id}`); await refresh(); } catch (error) { status.append(errorBox(error)); }
        }, { testid: `remove-node-${n.node_id}` })) },
      ], cluster.nodes, { testid: 'cluster-nodes', empty: 'no nodes registered yet' })),
    );
  };
  await refresh();
  context.every(3000, refresh);
}
