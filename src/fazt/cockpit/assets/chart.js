// A small line chart in inline SVG: no library, redrawn from an array of numbers.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 80;

function element(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

// Draws `values` (oldest first) across `capacity` slots, scaled to their maximum.
export function drawLineChart(svg, values, capacity) {
  const top = Math.max(1, ...values) * 1.15;
  const step = WIDTH / Math.max(1, capacity - 1);
  const offset = (capacity - values.length) * step;
  const points = values.map((v, i) =>
    [(offset + i * step).toFixed(1), (HEIGHT - (v / top) * (HEIGHT - 4) - 2).toFixed(1)]);
  svg.replaceChildren();
  for (const fraction of [0.25, 0.5, 0.75]) {
    const y = (HEIGHT * fraction).toFixed(1);
    svg.append(element("line", { class: "grid-line", x1: 0, x2: WIDTH, y1: y, y2: y }));
  }
  if (points.length < 2) return;
  const line = points.map((p) => p.join(",")).join(" ");
  const first = points[0][0];
  const last = points[points.length - 1][0];
  svg.append(element("polygon", { class: "area", points: `${first},${HEIGHT} ${line} ${last},${HEIGHT}` }));
  svg.append(element("polyline", { class: "line", points: line }));
  svg.dataset.points = String(points.length);
}
