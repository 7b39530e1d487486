// Building the page without innerHTML: every value shown goes in as a text node or an
// attribute, so message bodies, names and headers (all untrusted) can never become markup.

export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  setProps(element, props);
  append(element, children);
  return element;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function svg(tag, props, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  setProps(element, props);
  append(element, children);
  return element;
}

function setProps(element, props) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      element.setAttribute('class', value);
    } else if (name === 'testid') {
      element.setAttribute('data-testid', value);
    } else if (name === 'value' || name === 'checked' || name === 'selected') {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function clear(element) {
  while (element.firstChild) element.firstChild.remove();
  return element;
}

/** A table: columns are {label, cell(row) -> node or text, num?: right-aligned}. */
export function table(columns, rows, { testid, empty = 'none' } = {}) {
  const head = h('tr', null, columns.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)));
  const body = rows.length
    ? rows.map((row) => h('tr', null, columns.map((c) =>
        h('td', { class: c.num ? 'num' : null, 'data-label': c.label }, c.cell(row)))))
    : [h('tr', null, h('td', { colspan: columns.length, class: 'empty' }, empty))];
  return h('div', { class: 'table-wrap' },
    h('table', { testid }, h('thead', null, head), h('tbody', null, body)));
}

export function field(label, input) {
  return h('label', { class: 'field' }, h('span', null, label), input);
}

export function section(title, ...children) {
  return h('section', { class: 'panel' }, h('h2', null, title), ...children);
}

export function errorBox(error) {
  const text = error && error.reason ? `${error.status} ${error.kind}: ${error.reason}` : String(error);
  return h('div', { class: 'error', role: 'alert', testid: 'error' }, text);
}

/** A button that asks again in place before acting (no window.confirm). */
export function confirmButton(label, question, action, { danger = true, testid } = {}) {
  const holder = h('span', { class: 'confirm' });
  const start = h('button', { type: 'button', class: danger ? 'danger' : null, testid,
    onclick: () => {
      clear(holder);
      append(holder, [
        h('span', { class: 'question' }, typeof question === 'function' ? question() : question),
        h('button', { type: 'button', class: danger ? 'danger' : null, testid: testid && `${testid}-yes`,
          onclick: async () => { clear(holder).append(start); await action(); } }, 'Yes'),
        h('button', { type: 'button', onclick: () => clear(holder).append(start) }, 'Cancel'),
      ]);
    } }, label);
  holder.append(start);
  return holder;
}
