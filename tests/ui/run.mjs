// Browser tests of Sluice's web UI: Debian's chromium driven by playwright-core clicks through
// every page of a running broker that tests/ui/test_ui_browser.py filled with real data, checks
// what each page shows against what that data must give, and saves a screenshot of every page
// at a laptop and a phone width.
//
//   SLUICE_UI_CONFIG=/path/config.json node tests/ui/run.mjs
//
// The config (written by the pytest fixture) names the URL, the output directory, the seeded
// topic/group/queues and the expected values. Exits non-zero on the first failed check, after
// saving a screenshot of the page as it was.

import { readFileSync, mkdirSync, rmSync, mkdtempSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const config = JSON.parse(readFileSync(process.env.SLUICE_UI_CONFIG, 'utf8'));
const OUT = config.output_dir;
mkdirSync(OUT, { recursive: true });
const LAPTOP = { width: 1366, height: 900 };
const PHONE = { width: 390, height: 844 };
const TIMEOUT = 15000;

const shots = [];
let step = 'start';
const log = (...args) => console.log(`[ui] ${step}:`, ...args);

function check(condition, message) {
  if (!condition) throw new Error(`${step}: ${message}`);
}

async function waitUntil(what, probe, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try { last = await probe(); } catch (error) { last = error.message; }
    if (last === true) return;
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  throw new Error(`${step}: timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

const byTest = (page, id) => page.locator(`[data-testid="${id}"]`);

async function textOf(locator) {
  return (await locator.innerText({ timeout: TIMEOUT })).trim();
}

async function expectText(locator, expected, what) {
  await waitUntil(`${what} to read ${JSON.stringify(expected)}`, async () => {
    const text = await locator.innerText({ timeout: 1000 });
    return (expected instanceof RegExp ? expected.test(text) : text.trim() === String(expected)) || text;
  });
}

// The API, for checks of what the UI's actions really did.
async function api(method, path) {
  const response = await fetch(config.url + path, {
    method, headers: { Authorization: `Basic ${Buffer.from('guest:guest').toString('base64')}` },
  });
  const text = await response.text();
  check(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

/** Screenshots at both widths; at the phone width the page must not scroll sideways. */
async function screenshots(page, name) {
  await page.setViewportSize(LAPTOP);
  await page.waitForTimeout(200);
  const laptop = join(OUT, `${name}-laptop.png`);
  await page.screenshot({ path: laptop, fullPage: true });
  await page.setViewportSize(PHONE);
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const phone = join(OUT, `${name}-phone.png`);
  await page.screenshot({ path: phone, fullPage: true });
  check(overflow <= 1, `${name} scrolls sideways at ${PHONE.width}px (by ${overflow}px)`);
  await page.setViewportSize(LAPTOP);
  shots.push(laptop, phone);
}

async function nav(page, id) {
  await byTest(page, `nav-${id}`).click();
  await page.waitForURL(new RegExp(`#/${id}$`));
}

/** A page at laptop width whose script errors are collected in `pageErrors`. */
async function openPage(context) {
  const page = await context.newPage();
  await page.setViewportSize(LAPTOP);
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  // Chromium logs every non-2xx fetch ("Failed to load resource"); the tests cause some (a
  // wrong password, a refused query) on purpose, and check what the page shows instead.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) pageErrors.push(message.text());
  });
  return { page, pageErrors };
}

async function main(context) {
  const { page, pageErrors } = await openPage(context);
  // A native credentials dialog would mean the server sent the UI a basic challenge.
  page.on('dialog', (dialog) => { pageErrors.push(`unexpected dialog: ${dialog.message()}`); dialog.dismiss(); });

  try {
    // ---- login ----
    step = 'login';
    const response = await page.goto(config.url + '/');
    check(response.status() === 200, `GET / answered ${response.status()}`);
    check((response.headers()['content-security-policy'] || '').includes("script-src 'self'"), 'no CSP on the page');
    await byTest(page, 'login').waitFor({ timeout: TIMEOUT });
    await page.fill('input[name=user]', 'guest');
    await page.fill('input[name=password]', 'wrong');
    await page.click('button[type=submit]');
    await expectText(byTest(page, 'error'), 'Wrong user name or password.', 'the login error');
    await screenshots(page, 'login');
    await page.fill('input[name=password]', 'guest');
    await page.click('button[type=submit]');

    // ---- overview ----
    step = 'overview';
    await byTest(page, 'overview-cards').waitFor({ timeout: TIMEOUT });
    await expectText(byTest(page, 'card-topics').locator('.value'), config.expected.topics, 'the topic count');
    await expectText(byTest(page, 'card-queues').locator('.value'), config.expected.queues, 'the queue count');
    await expectText(byTest(page, 'card-connections').locator('.note'), /amqp [1-9]/, 'the AMQP connection');
    const messagesIn = Number((await textOf(byTest(page, 'card-messages-in').locator('.note'))).replace(/[^0-9]/g, ''));
    check(messagesIn >= config.expected.messages_in_at_least, `messages in total ${messagesIn} < ${config.expected.messages_in_at_least}`);
    // The chart draws a line once two samples (2 s apart) are in.
    await waitUntil('the message-rate chart to draw its lines', async () => {
      const points = await byTest(page, 'chart-messages').locator('polyline[data-series="in"]').getAttribute('points');
      return (points || '').trim().split(' ').length >= 2 || points;
    });
    await expectText(byTest(page, 'alarms'), 'No alarms', 'the alarms');
    await screenshots(page, 'overview');

    // ---- consumer groups ----
    step = 'groups';
    await nav(page, 'groups');
    const groupRow = byTest(page, 'groups').locator('tr', { hasText: config.group });
    await expectText(groupRow.locator('td').nth(4), String(config.expected.total_lag), 'the group total lag in the list');
    await screenshots(page, 'groups');
    await groupRow.locator('a').click();
    step = 'group detail';
    await expectText(byTest(page, 'total-lag'), String(config.expected.total_lag), 'the total lag');
    for (const [partition, lag] of Object.entries(config.expected.lag)) {
      await expectText(byTest(page, `lag-${config.topic}-${partition}`), String(lag), `the lag of partition ${partition}`);
    }
    await expectText(byTest(page, 'group-state'), 'Empty', 'the group state');
    await byTest(page, 'lag-chart').locator('polyline[data-series="total"]').waitFor({ state: 'attached' });
    await screenshots(page, 'group');
    step = 'reset offsets';
    await byTest(page, 'reset-topic').selectOption(config.topic);
    await byTest(page, 'reset-strategy').selectOption('shift');
    await byTest(page, 'reset-value').fill('-2');
    await byTest(page, 'reset-preview').click();
    const plan = byTest(page, 'reset-plan-table');
    await plan.waitFor({ timeout: TIMEOUT });
    for (const [partition, committed] of Object.entries(config.expected.committed)) {
      const row = plan.locator('tbody tr').filter({ has: page.locator(`td:nth-child(2):text-is("${partition}")`) });
      await expectText(row.locator('td').nth(2), String(committed), `the plan's current offset of partition ${partition}`);
      await expectText(row.locator('td').nth(3), String(Math.max(0, committed - 2)), `the plan's new offset of partition ${partition}`);
    }
    // The dry run changed nothing.
    let detail = await api('GET', `/api/groups/${encodeURIComponent(config.group)}`);
    check(detail.total_lag === config.expected.total_lag, `the dry run changed the lag to ${detail.total_lag}`);
    await screenshots(page, 'group-reset-plan');
    await byTest(page, 'reset-apply').click();
    await byTest(page, 'reset-apply-yes').click();
    await expectText(byTest(page, 'reset-done'), /Reset 2 partition/, 'the reset result');
    const lagAfter = config.expected.total_lag_after_shift_2;
    await expectText(byTest(page, 'total-lag'), lagAfter.toLocaleString('en-US'), 'the total lag after the reset');
    detail = await api('GET', `/api/groups/${encodeURIComponent(config.group)}`);
    check(detail.total_lag === lagAfter, `the API says lag ${detail.total_lag} after the reset, expected ${lagAfter}`);

    // ---- topics and the message browser ----
    step = 'topics';
    await nav(page, 'topics');
    const topicRow = byTest(page, 'topics').locator('tr', { hasText: config.topic });
    await expectText(topicRow.locator('td').nth(2), String(config.expected.topic_messages), 'the topic message count');
    await screenshots(page, 'topics');
    await topicRow.locator('a').click();
    step = 'topic detail';
    await expectText(byTest(page, 'topic-name'), config.topic, 'the topic name');
    check(await byTest(page, 'partitions').locator('tbody tr').count() === config.expected.partitions, 'partition rows');

    step = 'query by offset range';
    await byTest(page, 'query-partition').selectOption('0');
    await byTest(page, 'query-offset').fill('3');
    await byTest(page, 'query-end-offset').fill('6');
    await byTest(page, 'query-run').click();
    const messages = byTest(page, 'messages').locator('[data-testid=message]');
    await waitUntil('three messages', async () => (await messages.count()) === 3 || await messages.count());
    check(await messages.nth(0).getAttribute('data-offset') === '3', 'the first message is offset 3');
    await expectText(messages.nth(0).locator('[data-testid=message-key]'), 'k-3', 'the key of offset 3');
    await expectText(messages.nth(0).locator('[data-testid=message-header]').first(), 'source=ui-test', 'the header of offset 3');
    // JSON bodies are shown pretty-printed; the text and hex views show the same bytes.
    const body = messages.nth(0).locator('[data-testid=message-body]');
    await expectText(body, JSON.stringify({ n: 3, item: 'order-3' }, null, 2), 'the pretty JSON body');
    await messages.nth(0).locator('[data-testid=message-body-text]').click();
    await expectText(body, JSON.stringify({ n: 3, item: 'order-3' }), 'the text body');
    await messages.nth(0).locator('[data-testid=message-body-hex]').click();
    await expectText(body, /^00000000 {2}7b 22 6e 22 3a 33/, 'the hex body');
    await screenshots(page, 'topic-messages');

    step = 'query by timestamp';
    await byTest(page, 'query-mode').selectOption('timestamp');
    await byTest(page, 'query-timestamp').fill(String(config.base_timestamp_ms + 5000));
    await byTest(page, 'query-limit').fill('1');
    await byTest(page, 'query-run').click();
    await waitUntil('offset 5 found by its timestamp', async () =>
      (await messages.count()) === 1 && (await messages.nth(0).getAttribute('data-offset')) === '5' || await messages.count());
    await expectText(messages.nth(0).locator('[data-testid=message-key]'), 'k-5', 'the key found by timestamp');

    step = 'untrusted bodies';
    await byTest(page, 'query-mode').selectOption('offset');
    await byTest(page, 'query-partition').selectOption('1');
    await byTest(page, 'query-offset').fill(String(config.expected.hostile_offset));
    await byTest(page, 'query-end-offset').fill(String(config.expected.hostile_offset + 2));
    await byTest(page, 'query-limit').fill('10');
    await byTest(page, 'query-run').click();
    await waitUntil('the hostile and the binary message', async () => (await messages.count()) === 2 || await messages.count());
    await expectText(messages.nth(0).locator('[data-testid=message-body]'), config.hostile_value, 'the markup shown as text');
    await expectText(messages.nth(0).locator('[data-testid=message-key]'), config.hostile_key, 'the markup key shown as text');
    check(await byTest(page, 'messages').locator('img, script').count() === 0, 'message markup became elements');
    check(await byTest(page, 'messages').locator('b', { hasText: /^bold$/ }).count() === 0, 'a key\'s markup became an element');
    check(await page.evaluate(() => window.__sluice_xss === undefined), 'a message body ran script');
    // Not UTF-8: shown as hex.
    const binary = messages.nth(1).locator('[data-testid=message-body]');
    check(await binary.getAttribute('data-mode') === 'hex', 'a binary body starts in hex');
    await expectText(binary, /^00000000 {2}00 01 fe ff/, 'the binary body in hex');

    step = 'query by key';
    // The contract: GET /api/topics/{name}/messages?key=...; the UI shows what the API answers.
    await byTest(page, 'query-mode').selectOption('key');
    await byTest(page, 'query-partition').selectOption({ value: '' });
    await byTest(page, 'query-key').fill('k-7');
    const [keyResponse] = await Promise.all([
      page.waitForResponse((r) => r.url().includes('/messages?') && r.url().includes('key=k-7')),
      byTest(page, 'query-run').click(),
    ]);
    check(keyResponse.status() === 200, `the key query answered ${keyResponse.status()}`);
    await waitUntil('the message with key k-7', async () => (await messages.count()) >= 1 || await messages.count());
    await expectText(messages.nth(0).locator('[data-testid=message-key]'), 'k-7', 'the key found');
    check(await messages.nth(0).getAttribute('data-offset') === '7', 'k-7 is offset 7');
    step = 'query by message id';
    await byTest(page, 'query-mode').selectOption('message_id');
    await byTest(page, 'query-message-id').fill('id-2');
    const [idResponse] = await Promise.all([
      page.waitForResponse((r) => r.url().includes('/messages?') && r.url().includes('message_id=id-2')),
      byTest(page, 'query-run').click(),
    ]);
    check(idResponse.status() === 200, `the message id query answered ${idResponse.status()}`);
    await waitUntil('the message with id id-2', async () => (await messages.count()) >= 1 || await messages.count());
    check(await messages.nth(0).getAttribute('data-offset') === '2', 'id-2 is offset 2');

    step = 'follow';
    await byTest(page, 'query-mode').selectOption('offset');
    await byTest(page, 'query-partition').selectOption('0');
    await byTest(page, 'query-offset').fill(String(config.expected.p0_end - 1));
    await byTest(page, 'query-end-offset').fill('');
    await byTest(page, 'query-run').click();
    await waitUntil('the last message of partition 0', async () => (await messages.count()) === 1 || await messages.count());
    await byTest(page, 'follow').check();
    const followed = 'followed-' + Date.now();
    execFileSync(config.produce_cmd[0], [...config.produce_cmd.slice(1), followed], { stdio: 'inherit' });
    await waitUntil('the new message to appear', async () =>
      (await messages.count()) === 2 && (await textOf(messages.nth(1).locator('[data-testid=message-body]'))) === followed || await messages.count());
    check(await messages.nth(1).getAttribute('data-offset') === String(config.expected.p0_end), 'the followed message has the next offset');
    await byTest(page, 'follow').uncheck();
    await screenshots(page, 'topic-follow');

    // ---- queues ----
    step = 'queues';
    await nav(page, 'queues');
    await expectText(byTest(page, `ready-${config.queue}`), String(config.expected.queue_ready), 'the queue depth in the list');
    await screenshots(page, 'queues');
    await byTest(page, 'queues').locator('a', { hasText: config.queue }).first().click();
    step = 'queue detail';
    await expectText(byTest(page, 'queue-name'), config.queue, 'the queue name');
    await expectText(byTest(page, 'queue-ready'), String(config.expected.queue_ready), 'the queue depth');
    step = 'publish';
    await byTest(page, 'publish-payload').fill('{"from": "the ui"}');
    await byTest(page, 'publish-message-id').fill('ui-1');
    await byTest(page, 'publish-run').click();
    await expectText(byTest(page, 'publish-result'), /routed to a queue/, 'the publish result');
    const depth = config.expected.queue_ready + 1;
    await expectText(byTest(page, 'queue-ready'), String(depth), 'the depth after the publish');
    step = 'get (peek)';
    await byTest(page, 'get-count').fill('10');
    await byTest(page, 'get-run').click();
    const got = byTest(page, 'got-messages').locator('[data-testid=queue-message]');
    await waitUntil(`${depth} peeked messages`, async () => (await got.count()) === depth || await got.count());
    await expectText(got.nth(depth - 1).locator('[data-testid=queue-message-body]'), JSON.stringify({ from: 'the ui' }, null, 2), 'the published body');
    await expectText(got.nth(depth - 1), /message_id=ui-1/, 'the published message id');
    await expectText(byTest(page, 'queue-ready'), String(depth), 'the depth after a requeueing get');
    await screenshots(page, 'queue');
    step = 'purge';
    await byTest(page, 'purge').click();
    await byTest(page, 'purge-yes').click();
    await expectText(byTest(page, 'purge-result'), `Purged ${depth} message(s).`, 'the purge result');
    await expectText(byTest(page, 'queue-ready'), '0', 'the depth after the purge');

    step = 'move from a dead-letter queue';
    await page.goto(`${config.url}/#/queues/${encodeURIComponent(config.dead_queue)}`);
    await expectText(byTest(page, 'queue-ready'), String(config.expected.dead), 'the dead-letter depth');
    await byTest(page, 'move-run').click();
    await expectText(byTest(page, 'move-result'), `Moved ${config.expected.dead}, skipped 0.`, 'the move result');
    await expectText(byTest(page, 'queue-ready'), '0', 'the dead-letter queue after the move');
    const work = await api('GET', `/api/queues/${encodeURIComponent(config.work_queue)}`);
    check(work.messages_ready === config.expected.dead, `the moved messages are not back in ${config.work_queue}: ${work.messages_ready}`);

    // ---- exchanges ----
    step = 'exchanges';
    await nav(page, 'exchanges');
    for (const name of ['amq.direct', 'amq.fanout', 'amq.topic']) {
      await byTest(page, 'exchanges').locator('td', { hasText: name }).first().waitFor({ timeout: TIMEOUT });
    }
    await byTest(page, 'publish-exchange').selectOption({ value: '' });
    await byTest(page, 'publish-routing-key').fill(config.queue);
    await byTest(page, 'publish-payload').fill('via the exchanges page');
    await byTest(page, 'publish-run').click();
    await expectText(byTest(page, 'publish-result'), /routed to a queue/, 'the publish result');
    const queue = await api('GET', `/api/queues/${encodeURIComponent(config.queue)}`);
    check(queue.messages_ready === 1, `the queue holds ${queue.messages_ready} after the publish, expected 1`);
    await byTest(page, 'publish-routing-key').fill('no-such-queue-anywhere');
    await byTest(page, 'publish-run').click();
    await expectText(byTest(page, 'publish-result'), /routed to no queue/, 'the unroutable publish');
    await screenshots(page, 'exchanges');

    // ---- connections ----
    step = 'connections';
    await nav(page, 'connections');
    const amqpRow = byTest(page, 'connections').locator('tr', { hasText: 'amqp' });
    await waitUntil('the open AMQP connection', async () => (await amqpRow.count()) >= 1 || 'none');
    await expectText(amqpRow.first(), /guest/, 'the AMQP user');
    await expectText(byTest(page, 'channels').locator('tbody tr').first(), /guest/, 'the AMQP channel');
    await screenshots(page, 'connections');

    // ---- cluster: a single node lists itself as the metadata leader ----
    step = 'cluster';
    await nav(page, 'cluster');
    await expectText(byTest(page, 'cluster-nodes').locator('tbody tr').first(), /yes/, 'this node as metadata leader');
    await screenshots(page, 'cluster');

    // ---- a user without the administrator tag: reads work, actions show the 403 ----
    step = 'non-administrator';
    await page.getByRole('button', { name: 'Log out' }).click();
    await byTest(page, 'login').waitFor({ timeout: TIMEOUT });
    await page.fill('input[name=user]', config.reader[0]);
    await page.fill('input[name=password]', config.reader[1]);
    await page.click('button[type=submit]');
    await page.goto(`${config.url}/#/queues/${encodeURIComponent(config.queue)}`);
    await expectText(byTest(page, 'queue-ready'), '1', 'the depth seen by a reader');
    await byTest(page, 'purge').click();
    await byTest(page, 'purge-yes').click();
    await expectText(byTest(page, 'purge-result'), /403 forbidden: .*administrator/, 'the refusal');
    await expectText(byTest(page, 'queue-ready'), '1', 'the depth after the refused purge');

    step = 'page errors';
    check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(' | ')}`);
  } catch (error) {
    await page.setViewportSize(LAPTOP).catch(() => {});
    await page.screenshot({ path: join(OUT, 'failure.png'), fullPage: true }).catch(() => {});
    if (pageErrors.length) console.error(`[ui] page errors: ${pageErrors.join(' | ')}`);
    throw error;
  }
}

/** Cluster mode: the Cluster page's Remove buttons against a running cluster. */
async function clusterMain(context) {
  const { page, pageErrors } = await openPage(context);
  try {
    step = 'cluster login';
    await page.goto(config.url + '/');
    await byTest(page, 'login').waitFor({ timeout: TIMEOUT });
    await page.fill('input[name=user]', 'guest');
    await page.fill('input[name=password]', 'guest');
    await page.click('button[type=submit]');
    await byTest(page, 'overview-cards').waitFor({ timeout: TIMEOUT });
    await nav(page, 'cluster');
    const rows = byTest(page, 'cluster-nodes').locator('tbody tr');
    await waitUntil('four nodes listed', async () => (await rows.count()) === 4 || await rows.count());

    step = 'remove a node that hosts replicas';
    await byTest(page, `remove-node-${config.hosting_node}`).click();
    await byTest(page, `remove-node-${config.hosting_node}-yes`).click();
    await expectText(byTest(page, 'error'), new RegExp(`409 .*${config.topic}-0`), 'the refusal naming the hosted partition');
    let cluster = await api('GET', '/api/cluster');
    check(cluster.nodes.some((n) => n.node_id === config.hosting_node), `node ${config.hosting_node} was removed`);
    await screenshots(page, 'cluster-refusal');

    step = 'remove a node without replicas';
    await byTest(page, `remove-node-${config.free_node}`).click();
    await byTest(page, `remove-node-${config.free_node}-yes`).click();
    await waitUntil('three nodes listed', async () => (await rows.count()) === 3 || await rows.count());
    check(await byTest(page, `remove-node-${config.free_node}`).count() === 0, 'the removed node still has a button');
    cluster = await api('GET', '/api/cluster');
    check(!cluster.nodes.some((n) => n.node_id === config.free_node), `node ${config.free_node} is still listed`);
    await screenshots(page, 'cluster-removal');

    step = 'page errors';
    check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(' | ')}`);
  } catch (error) {
    await page.screenshot({ path: join(OUT, 'failure.png'), fullPage: true }).catch(() => {});
    if (pageErrors.length) console.error(`[ui] page errors: ${pageErrors.join(' | ')}`);
    throw error;
  }
}

const profile = mkdtempSync(join(tmpdir(), 'sluice-ui-chromium-'));
// A fresh profile every run (Playwright passes it to chromium as --user-data-dir).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: LAPTOP,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  await (config.mode === 'cluster' ? clusterMain(browser) : main(browser));
  console.log(`[ui] all pages passed; screenshots:\n${shots.join('\n')}`);
} catch (error) {
  failed = true;
  console.error(`[ui] FAILED ${error.stack || error}`);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
