/*
 * The capacity simulator page: sliders in, fazt_thresholds() out.
 *
 * All arithmetic about the machine lives in capacity.js (shared with the
 * server); this file only moves numbers between the form and the page.
 * Loaded as a separate file (no inline script) so the page runs under a
 * Content-Security-Policy of script-src 'self'.
 */
(function () {
  "use strict";

  var PRESETS = {
    "256mb": { ram_mb: 256, cpus: 1, disk_gb: 10 },
    "512mb": { ram_mb: 512, cpus: 1, disk_gb: 20 },
    "1gb": { ram_mb: 1024, cpus: 1, disk_gb: 25 },
    "4gb": { ram_mb: 4096, cpus: 2, disk_gb: 80 }
  };

  /*
   * RAM and storage sliders are logarithmic with round stops: eight steps per
   * doubling (128, 144, 160 ... 256, 288 ...), so each arrow key press moves
   * by a similar proportion and lands on a number a person would type.
   */
  var STEPS_PER_DOUBLING = 8;

  function stepToValue(base, step) {
    var doublings = Math.floor(step / STEPS_PER_DOUBLING);
    var within = step % STEPS_PER_DOUBLING;
    return base * Math.pow(2, doublings) * (1 + within / STEPS_PER_DOUBLING);
  }

  function valueToStep(base, value, maxStep) {
    if (value <= base) { return 0; }
    var doublings = Math.floor(Math.log(value / base) / Math.LN2);
    var octave = base * Math.pow(2, doublings);
    var within = Math.round((value / octave - 1) * STEPS_PER_DOUBLING);
    return Math.min(maxStep, doublings * STEPS_PER_DOUBLING + within);
  }

  var LINEAR = {
    toValue: function (slider) { return Number(slider.value); },
    toStep: function (value) { return value; }
  };

  function logScale(base) {
    return {
      toValue: function (slider) { return stepToValue(base, Number(slider.value)); },
      toStep: function (value, slider) { return valueToStep(base, value, Number(slider.max)); }
    };
  }

  var FIELDS = {
    ram_mb: { name: "ram", scale: logScale(128), human: function (v) { return formatMB(v); } },
    cpus: { name: "cpus", scale: LINEAR, human: function (v) { return v === 1 ? "1 CPU" : v + " CPUs"; } },
    disk_gb: { name: "disk", scale: logScale(1), human: function (v) { return formatMB(v * 1024); } }
  };

  function byId(id) { return document.getElementById(id); }

  function trimNumber(value, digits) {
    return String(Number(value.toFixed(digits)));
  }

  /* 512 MB, 1.5 GB, 20 TB: the largest unit that keeps the number at least 1. */
  function formatMB(mb) {
    if (mb >= 1024 * 1024) { return trimNumber(mb / (1024 * 1024), 1) + " TB"; }
    if (mb >= 1024) { return trimNumber(mb / 1024, 1) + " GB"; }
    if (mb < 10) { return trimNumber(mb, 2) + " MB"; }
    return Math.round(mb) + " MB";
  }

  function formatCount(n) {
    return Math.round(n).toLocaleString("en-US");
  }

  var FORMATS = {
    max_upload_mb: formatMB,
    vfs_cache_mb: formatMB,
    js_memory_mb: formatMB,
    sqlite_cache_mb: formatMB,
    maintenance_db_gb: function (gb) { return formatMB(gb * 1024); },
    small_file_rps: function (n) { return formatCount(n) + " / s"; },
    concurrent_users: formatCount,
    max_concurrent_js: formatCount,
    user_threads: formatCount,
    cockpit_threads: formatCount
  };

  function formatThreshold(entry, value) {
    if (entry.unit === "MB") { return formatMB(value); }
    if (entry.unit === "ms") { return trimNumber(value / 1000, 2) + " s"; }
    if (entry.unit === "x RAM") { return value + "\u00d7 RAM"; }
    var unit = value === 1 ? entry.unit.replace(/s$/, "") : entry.unit;
    return formatCount(value) + " " + unit;
  }

  /* Read one field from its typed input; null when it is not a usable number. */
  function readInput(key) {
    var input = byId(FIELDS[key].name + "-input");
    var value = Number(input.value);
    var ok = input.value !== "" && isFinite(value) &&
      value >= Number(input.min) && value <= Number(input.max);
    input.setAttribute("aria-invalid", ok ? "false" : "true");
    return ok ? value : null;
  }

  function setField(key, value) {
    var field = FIELDS[key];
    var slider = byId(field.name + "-slider");
    byId(field.name + "-input").value = String(value);
    slider.value = String(field.scale.toStep(value, slider));
    describe(key, value);
  }

  function describe(key, value) {
    var field = FIELDS[key];
    var text = field.human(value);
    var unit = byId(field.name + "-input").parentNode.querySelector(".unit").textContent;
    // Say "1.5 GB" beside "1536 MB", but not "25 GB" beside "25 GB".
    var redundant = key === "cpus" || text === value + " " + unit;
    byId(field.name + "-human").textContent = redundant ? "" : "= " + text;
    byId(field.name + "-slider").setAttribute("aria-valuetext", text);
  }

  function currentMachine() {
    var machine = {}, problems = [];
    Object.keys(FIELDS).forEach(function (key) {
      var value = readInput(key);
      if (value === null) {
        var input = byId(FIELDS[key].name + "-input");
        problems.push(byId(FIELDS[key].name + "-label").textContent + " must be between " +
          input.min + " and " + input.max + ".");
      }
      machine[key] = value;
    });
    machine.replica = byId("replica-input").checked;
    var error = byId("input-error");
    error.hidden = problems.length === 0;
    error.textContent = problems.join(" ");
    return problems.length === 0 ? machine : null;
  }

  function schemaByKey() {
    var map = {};
    FAZT_SCHEMA.forEach(function (entry) { map[entry.key] = entry; });
    return map;
  }

  function renderOutputs(result) {
    var outputs = document.querySelectorAll("output[data-key]");
    Array.prototype.forEach.call(outputs, function (output) {
      var key = output.getAttribute("data-key");
      var value = key in result ? result[key] : result.capabilities[key];
      output.setAttribute("data-value", String(value));
      output.textContent = FORMATS[key] ? FORMATS[key](value) : String(value);
    });
    var caps = result.capabilities;
    byId("summary").textContent = "About " + formatCount(caps.concurrent_users) +
      " people browsing at once, uploads up to " + formatMB(caps.max_upload_mb) +
      ", and a memory budget of " + formatMB(caps.memory_budget_mb) + ".";
  }

  function segmentsOf(ledger) {
    var parts = FAZT_LEDGER_ITEMS.map(function (item) {
      return { key: item.key, label: item.label, mb: ledger[item.key] };
    });
    parts.push({ key: "headroom", label: "Unallocated budget", mb: Math.max(0, ledger.headroom_mb) });
    parts.push({ key: "safety_margin", label: "Safety margin (30%)", mb: ledger.safety_margin_mb });
    parts.push({ key: "os_overhead", label: "Operating system", mb: ledger.os_overhead_mb });
    return parts;
  }

  function renderBar(ledger) {
    var bar = byId("ram-bar"), legend = byId("ram-legend");
    var parts = segmentsOf(ledger);
    var whole = ledger.ram_mb;
    if (bar.children.length !== parts.length) {
      bar.textContent = "";
      legend.textContent = "";
      parts.forEach(function (part) {
        var segment = document.createElement("span");
        segment.className = "segment swatch-" + part.key;
        bar.appendChild(segment);
        var item = document.createElement("li");
        item.id = "legend-" + part.key;
        var swatch = document.createElement("span");
        swatch.className = "swatch swatch-" + part.key;
        var name = document.createElement("span");
        name.className = "legend-name";
        name.textContent = part.label;
        var amount = document.createElement("span");
        amount.className = "legend-mb";
        item.appendChild(swatch);
        item.appendChild(name);
        item.appendChild(amount);
        legend.appendChild(item);
      });
    }
    parts.forEach(function (part, index) {
      bar.children[index].style.width = (100 * part.mb / whole).toFixed(3) + "%";
      bar.children[index].title = part.label + ": " + formatMB(part.mb);
      var item = legend.children[index];
      item.setAttribute("data-value", String(part.mb));
      item.querySelector(".legend-mb").textContent = formatMB(part.mb);
    });
  }

  function renderTable(result) {
    var body = byId("threshold-rows");
    var schema = schemaByKey();
    if (body.children.length === 0) {
      FAZT_SCHEMA.forEach(function (entry) {
        var row = document.createElement("tr");
        row.id = "row-" + entry.key;
        ["name", "value", "range", "why"].forEach(function (cls, i) {
          var cell = document.createElement(i === 0 ? "th" : "td");
          if (i === 0) { cell.scope = "row"; }
          cell.className = "cell-" + cls;
          // Shown on narrow screens, where the header row is hidden.
          cell.setAttribute("data-label", ["", "Value", "Safe range", ""][i]);
          row.appendChild(cell);
        });
        row.children[0].textContent = entry.label;
        var code = document.createElement("code");
        code.textContent = entry.key;
        row.children[0].appendChild(document.createElement("br"));
        row.children[0].appendChild(code);
        row.children[3].textContent = entry.description;
        body.appendChild(row);
      });
    }
    Object.keys(schema).forEach(function (key) {
      var entry = schema[key], row = byId("row-" + key), range = result.safe[key];
      row.children[1].textContent = formatThreshold(entry, result[key]);
      row.children[1].setAttribute("data-value", String(result[key]));
      row.children[2].textContent = formatThreshold(entry, range[0]) + " \u2013 " +
        formatThreshold(entry, range[1]);
    });
  }

  function markPreset(machine) {
    var buttons = document.querySelectorAll("button[data-preset]");
    Array.prototype.forEach.call(buttons, function (button) {
      var preset = PRESETS[button.getAttribute("data-preset")];
      var same = machine !== null && preset.ram_mb === machine.ram_mb &&
        preset.cpus === machine.cpus && preset.disk_gb === machine.disk_gb;
      button.setAttribute("aria-pressed", same ? "true" : "false");
    });
  }

  function update() {
    var machine = currentMachine();
    markPreset(machine);
    if (machine === null) { return; }
    var result = fazt_thresholds(machine);
    renderOutputs(result);
    renderBar(result.ledger);
    renderTable(result);
  }

  function wire(key) {
    var field = FIELDS[key];
    var slider = byId(field.name + "-slider"), input = byId(field.name + "-input");
    slider.addEventListener("input", function () {
      var value = Math.round(field.scale.toValue(slider));
      input.value = String(value);
      describe(key, value);
      update();
    });
    input.addEventListener("input", function () {
      var value = readInput(key);
      if (value !== null) {
        slider.value = String(field.scale.toStep(value, slider));
        describe(key, value);
      }
      update();
    });
  }

  function start() {
    Object.keys(FIELDS).forEach(function (key) {
      wire(key);
      setField(key, Number(byId(FIELDS[key].name + "-input").value));
    });
    byId("replica-input").addEventListener("change", update);
    var buttons = document.querySelectorAll("button[data-preset]");
    Array.prototype.forEach.call(buttons, function (button) {
      button.addEventListener("click", function () {
        var preset = PRESETS[button.getAttribute("data-preset")];
        Object.keys(FIELDS).forEach(function (key) { setField(key, preset[key]); });
        update();
      });
    });
    update();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
