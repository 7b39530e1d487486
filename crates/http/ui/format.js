import { h } from './dom.js';

export function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${unit ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

export function count(n) {
  return n == null ? '–' : Number(n).toLocaleString('en-US');
}

export function rate(n, unit = '/s') {
  if (n == null) return '–';
  const value = Number(n);
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)}${unit}`;
}

export function duration(ms) {
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return [d && `${d}d`, (d || hr) && `${hr}h`, (d || hr || m) && `${m}m`, `${s}s`].filter(Boolean).join(' ');
}

export function time(ms) {
  if (ms == null || ms < 0) return '–';
  return new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC');
}

export function base64ToBytes(base64) {
  const binary = atob(base64 || '');
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) out[i] = binary.charCodeAt(i);
  return out;
}

/** Hex dump: offset, 16 bytes, and their printable ASCII. */
export function hexDump(data) {
  const lines = [];
  for (let at = 0; at < data.length; at += 16) {
    const row = data.subarray(at, at + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${at.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join('\n');
}

/** Text of EncodedBytes ({size, text, base64}), or a note when the bytes are not UTF-8. */
export function encodedText(encoded) {
  if (encoded == null) return null;
  return encoded.text != null ? encoded.text : `(${encoded.size} bytes, not UTF-8)`;
}

/**
 * A body viewer: text, pretty JSON (when it parses) or hex, switched by buttons. Everything
 * goes in through textContent.
 */
export function bodyView(encoded, testid = 'body') {
  if (encoded == null) return h('em', { class: 'muted' }, 'null');
  let json = null;
  if (encoded.text != null) {
    try { json = JSON.stringify(JSON.parse(encoded.text), null, 2); } catch { json = null; }
  }
  const views = {
    text: () => encodedText(encoded),
    json: () => json,
    hex: () => hexDump(base64ToBytes(encoded.base64)),
  };
  const initial = json != null ? 'json' : encoded.text != null ? 'text' : 'hex';
  const pre = h('pre', { class: 'body', testid });
  const buttons = {};
  const show = (mode) => {
    pre.textContent = views[mode]();
    pre.dataset.mode = mode;
    for (const [name, button] of Object.entries(buttons)) button.classList.toggle('active', name === mode);
  };
  for (const mode of Object.keys(views)) {
    buttons[mode] = h('button', {
      type: 'button', class: 'small', disabled: mode === 'json' && json == null,
      testid: `${testid}-${mode}`, onclick: () => show(mode),
    }, mode === 'json' ? 'JSON' : mode);
  }
  show(initial);
  return h('div', { class: 'body-view' }, h('div', { class: 'modes' }, Object.values(buttons)), pre);
}
