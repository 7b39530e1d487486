// The Sluice UI: a hash router over a few pages, a login form, and polling that stops when
// the page changes. Plain ES modules, no build step.

import * as api from './api.js';
import { h, clear, errorBox } from './dom.js';
import { overviewPage } from './pages/overview.js';
import { topicsPage, topicPage } from './pages/topics.js';
import { groupsPage, groupPage } from './pages/groups.js';
import { queuesPage, queuePage, exchangesPage } from './pages/amqp.js';
import { connectionsPage } from './pages/connections.js';
import { clusterPage } from './pages/cluster.js';

const NAV = [
  ['overview', 'Overview'], ['topics', 'Topics'], ['groups', 'Consumer groups'],
  ['queues', 'Queues'], ['exchanges', 'Exchanges'], ['connections', 'Connections'],
  ['cluster', 'Cluster'],
];

const ROUTES = [
  [/^overview$/, overviewPage],
  [/^topics$/, topicsPage],
  [/^topics\/(.+)$/, topicPage],
  [/^groups$/, groupsPage],
  [/^groups\/(.+)$/, groupPage],
  [/^queues$/, queuesPage],
  [/^queues\/(.+)$/, queuePage],
  [/^exchanges$/, exchangesPage],
  [/^connections$/, connectionsPage],
  [/^cluster$/, clusterPage],
];

/** What a page may use: its container, timers that end with the page, and navigation. */
class PageContext {
  constructor(main) {
    this.main = main;
    this.timers = [];
    this.alive = true;
  }
  every(ms, action) {
    const run = async () => {
      if (!this.alive) return;
      try { await action(); } catch (error) { console.warn(error); }
    };
    this.timers.push(setInterval(run, ms));
    return run;
  }
  end() {
    this.alive = false;
    for (const timer of this.timers) clearInterval(timer);
  }
}

let current = null;

function route() {
  return decodeURIComponent(location.hash.replace(/^#\/?/, '')) || 'overview';
}

async function render() {
  if (current) current.end();
  if (!api.currentUser()) { renderLogin(); return; }
  const path = route();
  const main = h('main', { id: 'main' });
  clear(document.body).append(header(path), main);
  const context = new PageContext(main);
  current = context;
  const match = ROUTES.map(([pattern, page]) => [path.match(pattern), page]).find(([m]) => m);
  if (!match) { main.append(errorBox(`no page '${path}'`)); return; }
  const [groups, page] = match;
  try {
    await page(context, ...groups.slice(1));
  } catch (error) {
    if (context.alive) main.append(errorBox(error));
  }
}

function header(path) {
  const top = path.split('/')[0];
  return h('header', { class: 'top' },
    h('a', { class: 'brand', href: '#/overview' }, 'Sluice'),
    h('nav', null, NAV.map(([id, label]) =>
      h('a', { href: `#/${id}`, class: top === id ? 'active' : null, testid: `nav-${id}` }, label))),
    h('span', { class: 'user' }, api.currentUser(),
      h('button', { type: 'button', class: 'small', onclick: () => { api.logout(); render(); } }, 'Log out')));
}

function renderLogin(message) {
  const user = h('input', { name: 'user', autocomplete: 'username', required: true, value: 'guest' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const status = h('div');
  const form = h('form', { class: 'login panel', testid: 'login',
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api.tryLogin(user.value, password.value);
        render();
      } catch (error) {
        clear(status).append(errorBox(error.status === 401 ? 'Wrong user name or password.' : error));
      }
    } },
    h('h1', null, 'Sluice'),
    h('p', { class: 'muted' }, 'Log in with a broker user (guest/guest works from this machine).'),
    h('label', { class: 'field' }, h('span', null, 'User'), user),
    h('label', { class: 'field' }, h('span', null, 'Password'), password),
    h('button', { type: 'submit', class: 'primary' }, 'Log in'),
    message ? errorBox(message) : null,
    status);
  clear(document.body).append(h('main', { class: 'center' }, form));
  password.focus();
}

api.setUnauthorizedHandler(() => {
  if (current) current.end();
  api.logout();
  renderLogin('Your session needs credentials again.');
});

window.addEventListener('hashchange', render);
render();
