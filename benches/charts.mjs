// SVG charts for RESULTS.md, drawn from the points the benchmarks append to
// $TWILL_BENCH_CHARTS ({chart, series, x, y} per line). Plain SVG, no scripts or fonts to
// fetch: GitHub and any browser show them as images.

const W = 640;
const H = 360;
const M = { left: 70, right: 20, top: 40, bottom: 70 };
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const fmt = (v) =>
  Number.isInteger(v) ? String(v) : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3);

/** Ticks from 0 to a round number at or above `max`. */
function ticks(max) {
  const raw = max / 5 || 1;
  const step = [1, 2, 2.5, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw);
  const top = Math.ceil(max / step) * step || step;
  return Array.from({ length: Math.round(top / step) + 1 }, (_, i) => i * step);
}

function frame(title, body) {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
    ...body,
    "</svg>",
    "",
  ].join("\n");
}

function legend(names) {
  return names.map(
    (n, i) =>
      `<rect x="${M.left + 10 + i * 150}" y="${H - 22}" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/>` +
      `<text x="${M.left + 27 + i * 150}" y="${H - 12}">${esc(n)}</text>`,
  );
}

/** Lines over numeric x, drawn on a log2 axis (writers: 1, 4, 16, 64). */
export function lineChart({ title, xLabel, yLabel, series }) {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  const yTicks = ticks(Math.max(...series.flatMap((s) => s.points.map((p) => p.y))));
  const yMax = yTicks.at(-1);
  const lx = (x) => Math.log2(x);
  const [x0, x1] = [lx(xs[0]), lx(xs.at(-1))];
  const px = (x) => M.left + ((lx(x) - x0) / (x1 - x0 || 1)) * (W - M.left - M.right);
  const py = (y) => H - M.bottom - (y / yMax) * (H - M.top - M.bottom);
  const body = [
    ...yTicks.map(
      (t) =>
        `<line x1="${M.left}" x2="${W - M.right}" y1="${py(t)}" y2="${py(t)}" stroke="#ddd"/>` +
        `<text x="${M.left - 6}" y="${py(t) + 4}" text-anchor="end">${fmt(t)}</text>`,
    ),
    ...xs.map((x) => `<text x="${px(x)}" y="${H - M.bottom + 16}" text-anchor="middle">${fmt(x)}</text>`),
    `<text x="${(M.left + W - M.right) / 2}" y="${H - M.bottom + 34}" text-anchor="middle">${esc(xLabel)}</text>`,
    `<text transform="translate(16 ${(M.top + H - M.bottom) / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`,
    ...series.map((s, i) => {
      const c = COLORS[i % COLORS.length];
      const pts = s.points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
      const dots = s.points.map(
        (p) =>
          `<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3.5" fill="${c}"/>` +
          `<text x="${px(p.x).toFixed(1)}" y="${(py(p.y) - 8).toFixed(1)}" text-anchor="middle" fill="${c}" font-size="10">${fmt(p.y)}</text>`,
      );
      return `<polyline points="${pts}" fill="none" stroke="${c}" stroke-width="2"/>` + dots.join("");
    }),
    ...legend(series.map((s) => s.name)),
  ];
  return frame(title, body);
}

/** Horizontal bars, one per category, its series stacked left to right. */
export function stackedBars({ title, unit, series }) {
  const categories = [...new Set(series.flatMap((s) => s.points.map((p) => p.x)))];
  const value = (s, c) => s.points.find((p) => p.x === c)?.y ?? 0;
  const totals = categories.map((c) => series.reduce((sum, s) => sum + value(s, c), 0));
  const xTicks = ticks(Math.max(...totals));
  const left = 250;
  const band = (H - M.top - M.bottom) / categories.length;
  const px = (v) => left + (v / xTicks.at(-1)) * (W - left - M.right);
  const body = [
    ...xTicks.map(
      (t) =>
        `<line x1="${px(t)}" x2="${px(t)}" y1="${M.top}" y2="${H - M.bottom}" stroke="#ddd"/>` +
        `<text x="${px(t)}" y="${H - M.bottom + 16}" text-anchor="middle">${fmt(t)}</text>`,
    ),
    `<text x="${(left + W - M.right) / 2}" y="${H - M.bottom + 34}" text-anchor="middle">${esc(unit)}</text>`,
    ...categories.map((c, ci) => {
      const y = M.top + ci * band + band * 0.15;
      let at = 0;
      const bars = series.map((s, si) => {
        const v = value(s, c);
        const bar = `<rect x="${px(at).toFixed(1)}" y="${y.toFixed(1)}" width="${(px(at + v) - px(at)).toFixed(1)}" height="${(band * 0.7).toFixed(1)}" fill="${COLORS[si % COLORS.length]}"/>`;
        at += v;
        return bar;
      });
      const label = c.length > 40 ? c.slice(0, 39) + "…" : c;
      return (
        `<text x="${left - 6}" y="${(y + band * 0.45).toFixed(1)}" text-anchor="end" font-size="11">${esc(label)}</text>` +
        bars.join("") +
        `<text x="${(px(at) + 4).toFixed(1)}" y="${(y + band * 0.45).toFixed(1)}" font-size="10">${fmt(at)}</text>`
      );
    }),
    ...legend(series.map((s) => s.name)),
  ];
  return frame(title, body);
}

/** Groups JSON-line points into {chart: [{name, points}]}, series in order of appearance. */
export function groupPoints(lines) {
  const charts = new Map();
  for (const { chart, series, x, y } of lines) {
    if (!charts.has(chart)) charts.set(chart, new Map());
    const s = charts.get(chart);
    if (!s.has(series)) s.set(series, []);
    s.get(series).push({ x, y });
  }
  return new Map([...charts].map(([chart, s]) => [chart, [...s].map(([name, points]) => ({ name, points }))]));
}
