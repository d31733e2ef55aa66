// The ckptd web view: renders the page for location.pathname from the
// read-only JSON API under /api/v1 (server/service/web_view.h).
//
//   /                         the runs
//   /runs/RUN                 a run: metric charts, versions, alias and
//                             audit history
//   /runs/RUN/versions/REF    a version: metrics, environment, tensors
//
// Everything the API returns is user data (run names, labels, metric
// names, key paths): it reaches the DOM only as text (textContent and
// attribute values), never as markup. With --auth_file the API wants
// `Authorization: Bearer TOKEN`; the page asks for the token once and keeps
// it in sessionStorage (this tab only).
//
// For tests and scripts, document.body.dataset.state is "loading",
// "ready", "need-token" or "error" (then data-http-status is set).
'use strict';

(() => {
  const TOKEN_KEY = 'ckptd.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const main = document.getElementById('main');

  // ---- DOM helpers: text only ----------------------------------------

  function append(node, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k, String(v));
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    return append(node, children);
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return append(node, children);
  }

  function table(id, headings, rows) {
    return el('table', {id},
      el('thead', {}, el('tr', {}, ...headings.map((h) => el('th', {}, h)))),
      append(el('tbody'), rows));
  }

  // ---- Formatting -----------------------------------------------------

  function fmtBytes(n) {
    if (n === null || n === undefined) return '';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
  }

  function fmtTime(ms) {
    if (!ms) return '';
    return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }

  function fmtNum(v) {
    if (v === null || v === undefined) return 'n/a';
    if (Number.isInteger(v)) return String(v);
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) {
      return Number(v.toPrecision(5)).toExponential();  // shortest: 8e-5, 1.0365e-4
    }
    return v.toPrecision(6).replace(/\.?0+$/, '');
  }

  function fmtVersion(v) {
    return v ? `v${v}` : '–';
  }

  function runHref(run) {
    return `/runs/${encodeURIComponent(run)}`;
  }

  function versionHref(run, version) {
    return `${runHref(run)}/versions/${encodeURIComponent(version)}`;
  }

  // ---- The API --------------------------------------------------------

  class HttpError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const resp = await fetch(`/api/v1/${path}`, {headers, cache: 'no-store'});
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const err = body && body.error ? body.error : {};
      throw new HttpError(resp.status, err.code || '', err.message || resp.statusText);
    }
    return body;
  }

  function runPath(run) {
    return `runs/${encodeURIComponent(run)}`;
  }

  // ---- Page state -----------------------------------------------------

  function setCrumbs(...items) {
    const nav = document.getElementById('crumbs');
    nav.replaceChildren();
    for (const [text, href] of items) {
      nav.append(el('span', {class: 'sep'}, '/'));
      nav.append(href ? el('a', {href}, text) : el('span', {}, text));
    }
  }

  function setIdentity(identity) {
    const box = document.getElementById('identity');
    box.replaceChildren();
    if (sessionStorage.getItem(TOKEN_KEY) !== null) {
      const out = el('a', {href: '#', id: 'sign-out'}, 'sign out');
      out.addEventListener('click', (ev) => {
        ev.preventDefault();
        sessionStorage.removeItem(TOKEN_KEY);
        location.reload();
      });
      append(box, [identity ? `signed in as ${identity} · ` : '', out]);
    } else if (identity) {
      append(box, [identity]);
    }
  }

  function ready() {
    document.body.dataset.state = 'ready';
  }

  function showError(err) {
    if (err instanceof HttpError && err.status === 401) {
      showTokenForm(err.message);
      return;
    }
    const status = err instanceof HttpError ? err.status : 0;
    document.body.dataset.state = 'error';
    document.body.dataset.httpStatus = String(status);
    main.replaceChildren(el('div', {id: 'error', class: 'error'},
      el('h2', {}, status ? `${status} ${err.code}` : 'Error'),
      el('p', {id: 'error-message'}, err.message || String(err))));
  }

  function showTokenForm(message) {
    const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
    sessionStorage.removeItem(TOKEN_KEY);
    setIdentity('');
    document.body.dataset.state = 'need-token';
    const input = el('input', {type: 'password', id: 'token', name: 'token', autocomplete: 'off',
      placeholder: 'ckptd_…', required: 'required', size: '48'});
    const form = el('form', {id: 'token-form'},
      el('h2', {}, 'Bearer token'),
      el('p', {id: 'token-message', class: refused ? 'error' : 'muted'},
        refused ? `That token was refused: ${message}` :
          'This ckptd authenticates callers (--auth_file). Enter a token made by `ckpt token new`; ' +
          'it is kept in this tab only (sessionStorage).'),
      el('label', {for: 'token'}, 'Token '), input, ' ',
      el('button', {type: 'submit', id: 'token-submit'}, 'Open'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      // A header carries printable ASCII only (tokens are base64url).
      if (!/^[\x21-\x7e]+$/.test(token)) {
        const note = document.getElementById('token-message');
        note.className = 'error';
        note.textContent = 'A token is printable ASCII without spaces (like ckptd_3q2Yb…); that one is not.';
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      route();
    });
    main.replaceChildren(form);
    input.focus();
  }

  function moreButton(id, load) {
    const button = el('button', {type: 'button', id, class: 'more'}, 'Load more');
    button.addEventListener('click', async () => {
      button.disabled = true;
      try {
        if (!(await load())) button.remove();
      } catch (e) {
        showError(e);
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  // ---- The runs -------------------------------------------------------

  function runRow(r) {
    const p = r.policy || {};
    return el('tr', {class: 'run', 'data-run': r.name},
      el('td', {}, el('a', {href: runHref(r.name), class: 'run-name'}, r.name)),
      el('td', {class: 'num'}, r.version_count),
      el('td', {class: 'num'}, fmtBytes(r.total_bytes)),
      el('td', {}, fmtVersion(r.last_version)),
      el('td', {}, fmtVersion(r.best_version)),
      el('td', {}, p.monitor ? `${p.monitor} (${p.mode})` : '–'),
      el('td', {}, fmtTime(r.last_commit_at_ms)));
  }

  async function renderRuns() {
    setCrumbs(['runs', null]);
    const page = await api('runs');
    setIdentity(page.identity);
    const rows = page.runs.map(runRow);
    const body = [el('h1', {}, 'Runs')];
    if (rows.length === 0) {
      body.push(el('p', {class: 'muted', id: 'no-runs'}, 'No runs yet: push a checkpoint (ckptd.Client.save or ckpt push).'));
    } else {
      const t = table('runs', ['Run', 'Versions', 'Size', 'Last', 'Best', 'Monitor', 'Last commit'], rows);
      body.push(t);
      let next = page.next_page_token;
      if (next) {
        body.push(moreButton('more-runs', async () => {
          const more = await api(`runs?page_token=${encodeURIComponent(next)}`);
          append(t.tBodies[0], more.runs.map(runRow));
          next = more.next_page_token;
          return Boolean(next);
        }));
      }
    }
    main.replaceChildren(...body);
    ready();
  }

  // ---- A run ----------------------------------------------------------

  // Round values (1, 2 or 5 times a power of ten apart) in [lo, hi].
  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      ticks.push(Number(v.toPrecision(12)));
    }
    return ticks;
  }

  // One chart: a point per version that has the metric, `best` marked.
  function metricChart(metric, points, best, policy) {
    const W = 560;
    const H = 220;
    const m = {l: 64, r: 20, t: 18, b: 36};
    const sorted = points.slice().sort((a, b) => a.step - b.step || a.version - b.version);
    const xs = sorted.map((p) => p.step);
    const ys = sorted.map((p) => p.value);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    if (y0 === y1) {
      const d = Math.abs(y0) * 0.1 || 1;
      [y0, y1] = [y0 - d, y1 + d];
    } else {
      const d = (y1 - y0) * 0.08;
      [y0, y1] = [y0 - d, y1 + d];
    }
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    const monitored = policy && policy.monitor === metric;
    const chart = svg('svg', {class: 'chart', viewBox: `0 0 ${W} ${H}`, width: W, height: H,
      role: 'img', 'data-metric': metric, 'aria-label': `${metric} by step`});
    // Axes and ticks.
    chart.append(svg('line', {class: 'axis', x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b}));
    chart.append(svg('line', {class: 'axis', x1: m.l, y1: m.t, x2: m.l, y2: H - m.b}));
    for (const yv of niceTicks(y0, y1, 5)) {
      const y = sy(yv);
      chart.append(svg('line', {class: 'grid', x1: m.l, y1: y, x2: W - m.r, y2: y}));
      chart.append(svg('text', {class: 'tick', x: m.l - 6, y: y + 4, 'text-anchor': 'end'}, fmtNum(yv)));
    }
    const distinctSteps = [...new Set(xs)];
    const every = Math.max(1, Math.ceil(distinctSteps.length / 6));
    distinctSteps.forEach((step, i) => {
      if (i % every !== 0 && i !== distinctSteps.length - 1) return;
      chart.append(svg('text', {class: 'tick', x: sx(step), y: H - m.b + 16, 'text-anchor': 'middle'}, step));
    });
    chart.append(svg('text', {class: 'axis-label', x: W - m.r, y: H - 4, 'text-anchor': 'end'}, 'step'));
    // The line, then a point per version.
    if (sorted.length > 1) {
      const d = sorted.map((p, i) => `${i ? 'L' : 'M'}${sx(p.step).toFixed(1)},${sy(p.value).toFixed(1)}`).join(' ');
      chart.append(svg('path', {class: 'line', d}));
    }
    let bestPoint = null;
    for (const p of sorted) {
      const isBest = p.version === best;
      const c = svg('circle', {class: isBest ? 'point best' : 'point', cx: sx(p.step).toFixed(1), cy: sy(p.value).toFixed(1),
        r: isBest ? 6 : 3.5, 'data-version': p.version, 'data-step': p.step, 'data-value': p.value,
        'data-best': isBest ? 'true' : null},
      svg('title', {}, `v${p.version} · step ${p.step} · ${metric} ${fmtNum(p.value)}${isBest ? ' · best' : ''}`));
      chart.append(c);
      if (isBest) bestPoint = p;
    }
    if (bestPoint) {
      const x = sx(bestPoint.step);
      const y = sy(bestPoint.value);
      const right = x < W - m.r - 60;
      chart.append(svg('text', {class: 'best-label', x: right ? x + 10 : x - 10, y: y - 8,
        'text-anchor': right ? 'start' : 'end'}, `best v${bestPoint.version}`));
    }
    const caption = el('figcaption', {},
      el('span', {class: 'metric-name'}, metric),
      monitored ? el('span', {class: 'monitor'}, ` monitored (${policy.mode})`) : null,
      el('span', {class: 'muted'}, ` · ${sorted.length} version${sorted.length === 1 ? '' : 's'}`));
    return el('figure', {class: 'chart-box', 'data-metric': metric}, caption, chart);
  }

  function aliasChips(aliases) {
    return append(el('span', {class: 'aliases'}), (aliases || []).map((a) =>
      el('span', {class: `alias alias-${a === 'best' || a === 'last' ? a : 'user'}`, 'data-alias': a}, a)));
  }

  function labelChips(labels) {
    return append(el('span', {class: 'labels'}), Object.entries(labels || {}).map(([k, v]) =>
      el('span', {class: 'label-chip', 'data-label': k}, `${k}=${v}`)));
  }

  function metricsText(metrics) {
    return Object.entries(metrics || {}).map(([k, v]) => `${k}=${fmtNum(v)}`).join('  ');
  }

  function versionRow(run, v) {
    return el('tr', {class: 'version', 'data-version': v.version},
      el('td', {}, el('a', {href: versionHref(run, v.version)}, fmtVersion(v.version))),
      el('td', {class: 'num'}, v.step),
      el('td', {class: 'num'}, v.epoch),
      el('td', {class: 'metrics'}, metricsText(v.metrics)),
      el('td', {}, aliasChips(v.aliases), v.pinned ? el('span', {class: 'pinned'}, 'pinned') : null),
      el('td', {class: 'num'}, fmtBytes(v.total_bytes)),
      el('td', {class: 'num'}, fmtBytes(v.uploaded_bytes)),
      el('td', {}, labelChips(v.labels)),
      el('td', {}, fmtTime(v.committed_at_ms)));
  }

  async function renderRun(run) {
    setCrumbs(['runs', '/'], [run, null]);
    const p = runPath(run);
    const [info, versions, metrics, aliases, audit] = await Promise.all([
      api(p), api(`${p}/versions`), api(`${p}/metrics`), api(`${p}/aliases`), api(`${p}/audit`)]);
    setIdentity(info.identity);
    const policy = info.policy;
    const summary = el('dl', {class: 'summary', id: 'run-summary'},
      el('dt', {}, 'best'), el('dd', {}, info.best ? el('a', {href: versionHref(run, info.best)}, fmtVersion(info.best)) : '–'),
      el('dt', {}, 'last'), el('dd', {}, info.last ? el('a', {href: versionHref(run, info.last)}, fmtVersion(info.last)) : '–'),
      el('dt', {}, 'monitor'), el('dd', {}, policy.monitor ? `${policy.monitor} (${policy.mode})` : 'none: no best'),
      el('dt', {}, 'retention'), el('dd', {}, [
        policy.keep_last !== null ? `keep_last=${policy.keep_last}` : '',
        policy.keep_best !== null ? `keep_best=${policy.keep_best}` : '',
        policy.keep_every_n_steps !== null ? `keep_every_n_steps=${policy.keep_every_n_steps}` : '',
      ].filter(Boolean).join(' ') || 'keep everything'));

    // Charts: one per metric, the monitored one first.
    const byMetric = new Map();
    for (const pt of metrics.points) {
      if (pt.value === null) continue;  // NaN or infinite: not drawable
      if (!byMetric.has(pt.metric)) byMetric.set(pt.metric, []);
      byMetric.get(pt.metric).push(pt);
    }
    const names = [...byMetric.keys()].sort((a, b) =>
      (b === policy.monitor) - (a === policy.monitor) || (a < b ? -1 : a > b ? 1 : 0));
    const charts = el('section', {id: 'charts'}, el('h2', {}, 'Metrics'));
    if (names.length === 0) charts.append(el('p', {class: 'muted'}, 'No version has metrics.'));
    for (const name of names) charts.append(metricChart(name, byMetric.get(name), info.best, policy));
    if (metrics.truncated) charts.append(el('p', {class: 'muted'}, 'Only the newest points are drawn.'));

    const versionTable = table('versions',
      ['Version', 'Step', 'Epoch', 'Metrics', 'Aliases', 'Size', 'Uploaded', 'Labels', 'Committed'],
      versions.versions.map((v) => versionRow(run, v)));
    const versionSection = el('section', {id: 'versions-section'}, el('h2', {}, 'Versions'), versionTable);
    let next = versions.next_page_token;
    if (next) {
      versionSection.append(moreButton('more-versions', async () => {
        const more = await api(`${p}/versions?page_token=${encodeURIComponent(next)}`);
        append(versionTable.tBodies[0], more.versions.map((v) => versionRow(run, v)));
        next = more.next_page_token;
        return Boolean(next);
      }));
    }

    const aliasTable = table('alias-history', ['When', 'Alias', 'From', 'To', 'By'],
      aliases.events.slice().reverse().map((e) => el('tr', {class: 'alias-event', 'data-alias': e.alias},
        el('td', {}, fmtTime(e.at_ms)), el('td', {}, aliasChips([e.alias])),
        el('td', {}, fmtVersion(e.from_version)),
        el('td', {}, e.to_version ? fmtVersion(e.to_version) : 'deleted'),
        el('td', {}, e.actor))));
    const auditTable = table('audit', ['When', 'Who', 'Action', 'Version', 'Detail'],
      audit.events.slice().reverse().map((e) => el('tr', {class: 'audit-event', 'data-action': e.action},
        el('td', {}, fmtTime(e.at_ms)), el('td', {}, e.identity), el('td', {}, e.action),
        el('td', {}, fmtVersion(e.version)), el('td', {}, e.detail))));

    main.replaceChildren(
      el('h1', {}, el('span', {class: 'muted'}, 'run '), el('span', {id: 'run-name'}, run)),
      summary, charts, versionSection,
      el('section', {id: 'alias-section'}, el('h2', {}, 'Alias history'),
        aliases.truncated ? el('p', {class: 'muted'}, 'Newest events only.') : null, aliasTable),
      el('section', {id: 'audit-section'}, el('h2', {}, 'Audit log'),
        audit.truncated ? el('p', {class: 'muted'}, 'Newest events only.') : null, auditTable));
    ready();
  }

  // ---- A version ------------------------------------------------------

  function tensorRow(t) {
    return el('tr', {class: 'tensor', 'data-key': t.key, 'data-rank': t.rank},
      el('td', {class: 'num'}, t.rank),
      el('td', {class: 'key'}, t.key),
      el('td', {}, t.dtype),
      el('td', {}, `[${t.shape.join(', ')}]`),
      el('td', {class: 'num'}, fmtBytes(t.byte_length)));
  }

  async function renderVersion(run, ref) {
    const p = `${runPath(run)}/versions/${encodeURIComponent(ref)}`;
    const page = await api(p);
    const v = page.version;
    setCrumbs(['runs', '/'], [run, runHref(run)], [fmtVersion(v.version), null]);
    setIdentity('');
    const env = v.env || {};
    const dl = (id, pairs) => append(el('dl', {class: 'summary', id}),
      pairs.flatMap(([k, val]) => [el('dt', {}, k), el('dd', {}, val)]));
    const summary = dl('version-summary', [
      ['step', v.step], ['epoch', v.epoch], ['state', v.state], ['world size', v.world_size],
      ['size', fmtBytes(v.total_bytes)], ['uploaded', fmtBytes(v.uploaded_bytes)],
      ['created', fmtTime(v.created_at_ms)], ['committed', fmtTime(v.committed_at_ms)],
      ['aliases', aliasChips(v.aliases)], ['pinned', v.pinned ? 'yes' : 'no']]);
    const metricTable = table('version-metrics', ['Metric', 'Value'],
      Object.entries(v.metrics).map(([k, val]) => el('tr', {class: 'metric', 'data-metric': k},
        el('td', {}, k), el('td', {class: 'num'}, fmtNum(val)))));
    const envList = dl('env', [
      ['torch', env.torch_version], ['cuda', env.cuda_version || 'none'], ['python', env.python_version],
      ['host', env.hostname], ['client', env.client_version]]);
    const labelTable = table('labels', ['Label', 'Value'],
      Object.entries(v.labels).map(([k, val]) => el('tr', {class: 'label', 'data-label': k},
        el('td', {}, k), el('td', {class: 'label-value'}, val))));
    const shardTable = table('shards', ['Rank', 'Tensors', 'Size', 'Committed'],
      v.shards.map((s) => el('tr', {class: 'shard'}, el('td', {class: 'num'}, s.rank),
        el('td', {class: 'num'}, s.tensor_count), el('td', {class: 'num'}, fmtBytes(s.total_bytes)),
        el('td', {}, fmtTime(s.committed_at_ms)))));
    const tensorTable = table('tensors', ['Rank', 'Key', 'Dtype', 'Shape', 'Bytes'], page.tensors.map(tensorRow));
    const tensorSection = el('section', {id: 'tensor-section'},
      el('h2', {}, 'Tensors'),
      el('p', {class: 'muted', id: 'tensor-count'},
        `${page.tensor_count} tensor${page.tensor_count === 1 ? '' : 's'}, ${page.value_count} other value${page.value_count === 1 ? '' : 's'} (ints, floats, strings…)`),
      tensorTable);
    let next = page.next_tensor_offset;
    if (next !== null) {
      tensorSection.append(moreButton('more-tensors', async () => {
        const more = await api(`${p}?tensor_offset=${next}`);
        append(tensorTable.tBodies[0], more.tensors.map(tensorRow));
        next = more.next_tensor_offset;
        return next !== null;
      }));
    }
    main.replaceChildren(
      el('h1', {}, el('span', {id: 'version-name'}, `${run}@${v.version}`)),
      summary,
      el('section', {}, el('h2', {}, 'Metrics'), metricTable),
      el('section', {}, el('h2', {}, 'Environment'), envList, el('h3', {}, 'Labels'), labelTable),
      el('section', {}, el('h2', {}, 'Shards'), shardTable),
      tensorSection);
    ready();
  }

  // ---- Routing --------------------------------------------------------

  async function route() {
    document.body.dataset.state = 'loading';
    delete document.body.dataset.httpStatus;
    let parts;
    try {
      parts = location.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    } catch (e) {
      showError(new HttpError(400, 'INVALID_ARGUMENT', `the address ${location.pathname} is not valid URL encoding`));
      return;
    }
    try {
      if (parts.length === 0) {
        await renderRuns();
      } else if (parts.length === 2 && parts[0] === 'runs') {
        await renderRun(parts[1]);
      } else if (parts.length === 4 && parts[0] === 'runs' && parts[2] === 'versions') {
        await renderVersion(parts[1], parts[3]);
      } else {
        throw new HttpError(404, 'NOT_FOUND', `no page at ${location.pathname}`);
      }
    } catch (e) {
      showError(e);
    }
  }

  route();
})();
