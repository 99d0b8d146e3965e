/*
 * capacity.js: the ONE formula that turns a machine into fazt's thresholds.
 *
 * The server evaluates this file in QuickJS, the simulator page loads it with
 * a <script> tag, and the tests run it in Node too, so the page and the server
 * can never disagree. Plain ES2019 globals: no DOM, no modules, no Math.log or
 * Math.pow (engines may round those differently), only + - * / and floor.
 *
 * All memory is in MB (MiB), disk in GB (GiB).
 */

/* The fixed costs of the process, measured (see DESIGN.md). */
var FAZT_BASELINE_MB = 30;   // the interpreter with falcon, waitress, psutil, quickjs
var FAZT_PINNED_MB = 2;      // admin assets + config, never evicted
var FAZT_THREAD_MB = 0.25;   // one worker thread's stack and frame
/*
 * The connection ledger, measured in a memory cgroup with the kernel's TCP buffers
 * charged (bench/loop_bench.py --only costs, bench/LOOP.md). The sizes below are the
 * server's own constants, copied because this file runs in a browser too; a test
 * (tests/test_capacity.py) fails when they drift from the Python ones.
 */
var FAZT_CONNECTION_KB = 8;  // an open connection, idle or sending headers: measured 6-8 KiB
var FAZT_BODY_KB = 16;       // a body being read stays in RAM up to this (SPOOL_MEMORY)
var FAZT_BODIES_MIN = 8;     // bodies read at once, at the least (admission.py BODIES_MIN)
var FAZT_ANSWER_MB = 0.375;  // an answer in flight from a thread: 128 KiB queued + one piece
var FAZT_CHUNK_KB = 256;     // a large file's chunk (files.CHUNK_SIZE)
var FAZT_STREAM_SNDBUF_KB = 512; // a download's socket send buffer (STREAM_SNDBUF)
var FAZT_READ_AHEAD_MB = 8;  // the most all downloads together hold read ahead (READ_AHEAD_MB)
// The file cache also remembers where files live (and the fast path's rendered answers):
// FOUND_SHARE of its size on top (vfs.py).
var FAZT_FOUND_SHARE = 0.10;
var FAZT_WARM_POOL_MB = 8;   // warm JavaScript contexts, all threads together
/* A large download: the chunk being sent and the one after it, and its socket's send
 * buffer, which the kernel books at twice what is asked (measured 1.9 MB a download,
 * the shared read-ahead aside). */
var FAZT_STREAM_MB = (2 * FAZT_CHUNK_KB + 2 * FAZT_STREAM_SNDBUF_KB) / 1024;
var FAZT_SAFETY_FACTOR = 0.7; // the seed: usable = (total - OS overhead) * 0.7
/*
 * Litestream, fazt's child while replication is on (or while it follows a replica).
 * Measured (0.5.17): 36-38 MiB at rest, about 80 MiB while it compacts, 59-68 MiB
 * with GOMEMLIMIT=32MiB; 79 MiB private (108 MiB RSS with its text) during the first
 * snapshot of a 1 GB database under the soak's load (bench section 10). Its Go heap
 * goal grows with the budget (5% of it, 32 to 256 MB) and the ledger charges that
 * goal plus the rest of that peak.
 */
var FAZT_REPLICA_FLOOR_MB = 48;

/* The machine the schema defaults are computed for (a small VPS). */
var FAZT_REFERENCE_MACHINE = { ram_mb: 1024, cpus: 1, disk_gb: 25 };

/* The RAM consumers of the ledger, in the order the page stacks them. */
var FAZT_LEDGER_ITEMS = [
  { key: "baseline", label: "Python baseline" },
  { key: "pinned", label: "Pinned admin assets" },
  { key: "vfs_cache", label: "File cache (VFS)" },
  { key: "sqlite", label: "SQLite page caches" },
  { key: "js", label: "JavaScript slots" },
  { key: "threads", label: "Worker threads" },
  { key: "buffers", label: "Connections, answers and downloads in flight" },
  { key: "replica", label: "Litestream (replication)" }
];

/*
 * One entry per threshold. min/max is the sane hard range: a value outside it
 * is refused even with break glass. `default` is filled in below from the
 * formula for FAZT_REFERENCE_MACHINE, so it cannot drift from it.
 */
var FAZT_SCHEMA = [
  {
    key: "vfs_cache_mb", unit: "MB", label: "File cache", integer: true, min: 0, max: 1048576,
    description: "RAM for recently served files; 15% of what is left after fixed costs, " +
      "at most 4 GB, since past that the OS file cache does the job as well."
  },
  {
    key: "large_file_mb", unit: "MB", label: "Large file size", integer: true, min: 1, max: 1024,
    description: "Files above this never enter RAM and stream in chunks; 5 MB keeps one " +
      "file a small slice of the cache and of each thread's memory."
  },
  {
    key: "max_upload_mb", unit: "MB", label: "Largest upload", integer: true, min: 1, max: 1048576,
    description: "Uploads spool to disk but the deploy writes them again in one transaction, " +
      "so: a quarter of usable RAM and a twentieth of free disk, whichever is smaller."
  },
  {
    key: "max_concurrent_js", unit: "slots", label: "JavaScript at once", integer: true,
    min: 1, max: 1024,
    description: "Handlers running at once (more get 429); one per CPU but one at most " +
      "(one at least), because JavaScript burns CPU, more slots only make each one " +
      "slower, and one CPU is the event loop's, which serves everything else."
  },
  {
    key: "js_memory_mb", unit: "MB", label: "JavaScript memory", integer: true, min: 1, max: 4096,
    description: "Memory limit of one handler; 30% of what is left after fixed costs, shared " +
      "by the slots, 4 to 64 MB (16 MB or more once the budget allows, with fewer slots)."
  },
  {
    key: "js_warm_mb", unit: "MB", label: "Warm JavaScript context", integer: false,
    min: 0, max: 64,
    description: "Each site thread, and the event loop (which runs quick handlers itself), " +
      "keeps the last handler's context for that site's next " +
      "request when its heap is at most this (0: a fresh context every time, and no " +
      "handler runs on the loop); 1 MB " +
      "where the JavaScript budget spares it, less or 0 on hosts too small for it."
  },
  {
    key: "js_timeout_ms", unit: "ms", label: "JavaScript time limit", integer: true,
    min: 10, max: 600000,
    description: "CPU time one handler may use; 3 s is long for a web request yet short " +
      "enough that a runaway loop frees its slot quickly."
  },
  {
    key: "sqlite_cache_mb", unit: "MB", label: "SQLite cache", integer: false,
    min: 0.25, max: 65536,
    description: "Page cache of EACH database connection (one per thread, plus two); 10% of " +
      "what is left after fixed costs, split between the connections."
  },
  {
    key: "user_threads", unit: "threads", label: "Site threads", integer: true, min: 1, max: 1024,
    description: "Threads serving sites; one per 64 MB usable, at least 2, at most the JS " +
      "slots plus 1 per CPU (64 in all): more only queue for Python's lock, cockpit included."
  },
  {
    key: "cockpit_threads", unit: "threads", label: "Cockpit threads", integer: true,
    min: 1, max: 64,
    description: "Threads reserved for the admin cockpit and login, which site traffic can " +
      "never occupy; a quarter of the site threads, 2 to 4 (a backup on one leaves one " +
      "for a sign-in)."
  },
  {
    key: "maintenance_ratio", unit: "x RAM", label: "Maintenance ratio", integer: true,
    min: 1, max: 1000000,
    description: "Boot into maintenance (sites answer 503) when the database is larger than " +
      "this many times the RAM: the seed's 100x marks where the machine starts to thrash."
  },
  {
    key: "connection_limit", unit: "connections", label: "Open connections", integer: true,
    min: 16, max: 1000000,
    description: "Connections held open; an idle one costs about " + FAZT_CONNECTION_KB +
      " KB (a TLS one twice that, and counts as two), plus a share of the bodies being " +
      "read: with the answers and downloads in flight, 11% of usable RAM. Past it a " +
      "connection between requests is closed (a keep-alive only once idle 2 s); the " +
      "cockpit keeps a reserve beyond it."
  },
  {
    key: "address_connections", unit: "connections", label: "Connections per address",
    integer: true, min: 1, max: 1000000,
    description: "Connections one client address may hold: a quarter of the limit, at least " +
      "16, so one client cannot take everyone's share; past it its requests get 429."
  },
  {
    key: "address_requests_per_s", unit: "requests/s", label: "Requests per address",
    integer: true, min: 1, max: 1000000,
    description: "Requests a second one client address may send (with two seconds of " +
      "burst) before it gets 429; the cockpit is exempt."
  },
  {
    key: "max_streams", unit: "downloads", label: "Large downloads at once", integer: true,
    min: 1, max: 100000,
    description: "Files above the large-file size being streamed at once, however slowly " +
      "their clients read; each holds about " + FAZT_STREAM_MB + " MB (two chunks and its " +
      "socket's send buffer), so 3% of usable RAM, at least 1; together they also read up " +
      "to " + FAZT_READ_AHEAD_MB + " MB ahead. Past it a download gets 503 with Retry-After."
  },
  {
    key: "zip_max_unpacked_mb", unit: "MB", label: "Largest unpacked zip", integer: true,
    min: 1, max: 16777216,
    description: "What a zip upload may unpack to in all: four uploads' worth, at most a " +
      "tenth of free disk, since the deploy writes it into the database and its WAL."
  },
  {
    key: "zip_max_ratio", unit: "x", label: "Zip unpack ratio", integer: false,
    min: 1, max: 1000000,
    description: "Unpacked size over uploaded size for a whole zip; sites compress 2-10x, " +
      "a zip bomb hundreds or thousands of times."
  },
  {
    key: "zip_max_entry_ratio", unit: "x", label: "Zip entry unpack ratio", integer: false,
    min: 1, max: 1000000,
    description: "The same ratio for one entry over 64 KB, so one bomb cannot hide among " +
      "incompressible files."
  },
  {
    key: "zip_max_entries", unit: "entries", label: "Zip entries", integer: true,
    min: 1, max: 10000000,
    description: "Entries in one zip; each costs about 1 KB of RAM while it deploys, so " +
      "32 per MB usable, 1000 to 100000."
  },
  {
    key: "zip_max_path", unit: "characters", label: "Zip path length", integer: true,
    min: 1, max: 65535,
    description: "Longest name of a file in a zip; real sites stay under 200 characters."
  }
];

function fazt_clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

/* Round to two decimals, so that the ledger reads cleanly and stays exact in JSON. */
function fazt_round2(value) {
  return Math.round(value * 100) / 100;
}

/* Round down to a quarter MB, the step of the SQLite cache. */
function fazt_quarter(value) {
  return Math.floor(value * 4) / 4;
}

function fazt_machine(machine) {
  var m = machine || {};
  var ram = Number(m.ram_mb), cpus = Number(m.cpus), disk = Number(m.disk_gb);
  if (!isFinite(ram) || ram <= 0) { throw new TypeError("ram_mb must be a positive number"); }
  if (!isFinite(cpus) || cpus <= 0) { throw new TypeError("cpus must be a positive number"); }
  if (!isFinite(disk) || disk < 0) { throw new TypeError("disk_gb must be zero or more"); }
  return { ram_mb: ram, cpus: cpus, disk_gb: disk, replica: m.replica === true };
}

/* Litestream's Go heap goal (GOMEMLIMIT) on this machine, in MB. */
function fazt_replica_gomemlimit_mb(ram_mb) {
  return fazt_clamp(Math.floor(fazt_usable_mb(ram_mb) * 0.05), 32, 256);
}

/* What all large downloads together may hold read ahead on this machine, in MB (the
 * server gives its stream readers this much): an eighth of the budget past the 40 MB the
 * process needs at the least, from two chunks up to READ_AHEAD_MB. */
function fazt_read_ahead_mb(ram_mb) {
  // Not rounded: a step here would take a whole MB from the rest at once, and a bigger
  // host would then get less of something else.
  return fazt_clamp((fazt_usable_mb(ram_mb) - 40) / 8, 2 * FAZT_CHUNK_KB / 1024,
    FAZT_READ_AHEAD_MB);
}

/* What Litestream costs the budget: nothing unless replication is on. */
function fazt_replica_mb(machine) {
  var m = fazt_machine(machine);
  return m.replica ? FAZT_REPLICA_FLOOR_MB + fazt_replica_gomemlimit_mb(m.ram_mb) : 0;
}

/*
 * What the operating system and its daemons take: 10% of RAM, at most 2 GB,
 * faded in below 1 GB because a small host is usually a container whose limit
 * covers this process alone (64 MB -> 0.4 MB, 256 MB -> 6.4 MB, 1 GB -> 102 MB).
 */
function fazt_os_overhead_mb(ram_mb) {
  return fazt_round2(Math.min(2048, 0.1 * ram_mb * Math.min(1, ram_mb / 1024)));
}

/* The budget every threshold draws from: (RAM - OS overhead) * 0.7. */
function fazt_usable_mb(ram_mb) {
  return fazt_round2((ram_mb - fazt_os_overhead_mb(ram_mb)) * FAZT_SAFETY_FACTOR);
}

function fazt_schema_entry(key) {
  for (var i = 0; i < FAZT_SCHEMA.length; i++) {
    if (FAZT_SCHEMA[i].key === key) { return FAZT_SCHEMA[i]; }
  }
  return null;
}

/* Warm JavaScript contexts kept between requests: one a site thread, one for the loop. */
function fazt_warm_contexts(user_threads) {
  return user_threads + 1;
}

/* Only the threshold keys, computed from the machine. */
function fazt_compute(machine) {
  var m = fazt_machine(machine);
  var usable = fazt_usable_mb(m.ram_mb);
  var cpus = m.cpus;

  // JavaScript burns CPU: more slots than CPUs only make each one slower. And one CPU is
  // the event loop's, which serves every other site, admission and the cockpit's front
  // door: with a slot per CPU, handlers spinning on both CPUs of a 2-CPU host left the
  // loop 46% of one, and the owner's status read waited for it (its p99 6.6-6.8 ms under
  // bench section 4's load, 3.3-4.3 ms with one slot less; same load, side by side).
  var js_slots_by_cpu = Math.max(1, Math.floor(cpus) - 1);
  // Site threads: enough for every JS slot plus one per CPU for files. More runnable
  // threads than that only queue for Python's lock, and the cockpit queues behind them
  // (measured on 2 CPUs under a static flood: 32 site threads made a sign-in 9.8x
  // slower; 6 put its p50 at 75-96 ms, 4 at 66-77 ms, for the same req/s; idle 51 ms).
  // Streams need no thread: the event loop feeds them.
  var user_threads = fazt_clamp(Math.floor(usable / 64), 2,
    Math.max(2, Math.min(64, js_slots_by_cpu + Math.floor(cpus))));
  // Two at least: a deploy or a backup on one cockpit thread must not hold up a sign-in.
  var cockpit_threads = fazt_clamp(Math.floor(user_threads / 4), 2, 4);
  var connections = user_threads + cockpit_threads + 2;
  // 11% of the budget holds the open connections, the answers in flight on the threads
  // and the large downloads (3% of the budget, at least one); their shared read-ahead
  // comes on top.
  var max_streams = fazt_clamp(Math.floor(usable * 0.03 / FAZT_STREAM_MB), 1, 100000);
  // The least everything else takes (the floors below): on a tiny host the connections
  // get what is left of it, so the ledger stays within the budget.
  var others_min = FAZT_BASELINE_MB + FAZT_PINNED_MB + fazt_replica_mb(m) +
    FAZT_THREAD_MB * connections + 4 + (1 + FAZT_FOUND_SHARE) + 0.25 * connections +
    fazt_read_ahead_mb(m.ram_mb) +
    FAZT_BODIES_MIN * FAZT_BODY_KB / 1024;
  // Each connection is charged its own memory and its share of the bodies in flight (an
  // eighth of the connections may send one at once: admission.py's bodies_limit).
  var connection_limit = fazt_clamp(Math.floor(
    (Math.min(usable * 0.11, usable - others_min) -
     (user_threads + cockpit_threads) * FAZT_ANSWER_MB - max_streams * FAZT_STREAM_MB) *
    1024 / (FAZT_CONNECTION_KB + FAZT_BODY_KB / 8)), 16, 100000);
  var address_connections = Math.max(16, Math.floor(connection_limit / 4));

  // What is left once the fixed costs, the threads and the connections are paid.
  var rest = usable - FAZT_BASELINE_MB - FAZT_PINNED_MB - fazt_replica_mb(m) -
    FAZT_THREAD_MB * connections -
    fazt_connections_mb(connection_limit, user_threads + cockpit_threads, max_streams,
      m.ram_mb);

  // Warm contexts (one a site thread and one for the event loop, see runtime.py: quick
  // handlers run on the loop) come out of the JavaScript budget,
  // when it can spare them beside one slot of 4 MB: a pool of FAZT_WARM_POOL_MB (a tenth
  // of the share on big hosts), at most 1 MB a thread. The pool grows no faster than the
  // share and does not change when a thread is added, so more RAM never gives a handler
  // less memory.
  var js_share = rest * 0.3;
  var warm_pool = fazt_clamp(js_share - 4 - FAZT_WARM_POOL_MB, 0,
    Math.max(FAZT_WARM_POOL_MB, js_share * 0.1));
  var js_budget = js_share - warm_pool;
  var js_warm_mb = Math.min(1, Math.floor(warm_pool / fazt_warm_contexts(user_threads) * 100) /
    100);
  // Fewer slots rather than starved ones: a handler gets 16 MB when the budget allows.
  var js_memory_mb = fazt_clamp(Math.max(Math.floor(js_budget / js_slots_by_cpu),
    Math.min(16, Math.floor(js_budget))), 4, 64);
  var max_concurrent_js = fazt_clamp(Math.floor(js_budget / js_memory_mb), 1, js_slots_by_cpu);

  var sqlite_cache_mb = fazt_clamp(fazt_quarter(rest * 0.1 / connections), 0.25, 64);

  // The cache takes its share, but never more than what the others left.
  var left = rest - max_concurrent_js * js_memory_mb -
    js_warm_mb * fazt_warm_contexts(user_threads) -
    sqlite_cache_mb * connections;
  // The cache also pays for remembering where files live: FAZT_FOUND_SHARE on top.
  var vfs_cache_mb = fazt_clamp(Math.floor(Math.min(rest * 0.15, left) / (1 + FAZT_FOUND_SHARE)),
    1, 4096);

  var disk_mb = m.disk_gb * 1024;
  var max_upload_mb = Math.max(1, Math.floor(Math.min(usable / 4, disk_mb / 20)));

  return {
    vfs_cache_mb: vfs_cache_mb,
    large_file_mb: 5,
    max_upload_mb: max_upload_mb,
    max_concurrent_js: max_concurrent_js,
    js_memory_mb: js_memory_mb,
    js_warm_mb: js_warm_mb,
    js_timeout_ms: 3000,
    sqlite_cache_mb: sqlite_cache_mb,
    user_threads: user_threads,
    cockpit_threads: cockpit_threads,
    maintenance_ratio: 100,
    connection_limit: connection_limit,
    address_connections: address_connections,
    address_requests_per_s: 1000,
    max_streams: max_streams,
    zip_max_unpacked_mb: Math.max(1, Math.floor(Math.min(max_upload_mb * 4, disk_mb / 10))),
    zip_max_ratio: 100,
    zip_max_entry_ratio: 200,
    zip_max_entries: fazt_clamp(Math.floor(usable * 32), 1000, 100000),
    zip_max_path: 512
  };
}

/* Open connections, the bodies being read, an answer in flight on every thread, and the
 * large downloads with the read-ahead they share. */
function fazt_connections_mb(connection_limit, threads, streams, ram_mb) {
  var bodies = Math.max(FAZT_BODIES_MIN, Math.floor(connection_limit / 8));
  return fazt_round2((connection_limit * FAZT_CONNECTION_KB + bodies * FAZT_BODY_KB) / 1024 +
    threads * FAZT_ANSWER_MB + streams * FAZT_STREAM_MB + fazt_read_ahead_mb(ram_mb));
}

/* The thresholds given, with any missing key taken from the formula. */
function fazt_complete(thresholds, machine) {
  var full = fazt_compute(machine);
  var given = thresholds || {};
  for (var i = 0; i < FAZT_SCHEMA.length; i++) {
    var key = FAZT_SCHEMA[i].key;
    if (Object.prototype.hasOwnProperty.call(given, key)) { full[key] = given[key]; }
  }
  return full;
}

/*
 * The memory the thresholds allow, item by item, against the budget. This is
 * the invariant everything else leans on: total_mb <= usable_mb.
 */
function fazt_ledger(thresholds, machine) {
  var m = fazt_machine(machine);
  var t = fazt_complete(thresholds, m);
  var threads = t.user_threads + t.cockpit_threads + 2;
  var ledger = {
    baseline: FAZT_BASELINE_MB,
    pinned: FAZT_PINNED_MB,
    vfs_cache: fazt_round2(t.vfs_cache_mb * (1 + FAZT_FOUND_SHARE)),  // with its locations
    sqlite: fazt_round2(t.sqlite_cache_mb * threads),
    // Running handlers, and the context each site thread (and the loop) keeps warm.
    js: fazt_round2(t.max_concurrent_js * t.js_memory_mb +
      t.js_warm_mb * fazt_warm_contexts(t.user_threads)),
    threads: fazt_round2(FAZT_THREAD_MB * threads),
    buffers: fazt_connections_mb(t.connection_limit, t.user_threads + t.cockpit_threads,
      t.max_streams, m.ram_mb),
    replica: fazt_replica_mb(m)
  };
  var total = 0;
  for (var i = 0; i < FAZT_LEDGER_ITEMS.length; i++) { total += ledger[FAZT_LEDGER_ITEMS[i].key]; }
  var overhead = fazt_os_overhead_mb(m.ram_mb);
  var usable = fazt_usable_mb(m.ram_mb);
  ledger.total_mb = fazt_round2(total);
  ledger.usable_mb = usable;
  ledger.ram_mb = m.ram_mb;
  ledger.os_overhead_mb = overhead;
  ledger.safety_margin_mb = fazt_round2(m.ram_mb - overhead - usable);
  ledger.headroom_mb = fazt_round2(usable - ledger.total_mb);
  return ledger;
}

/*
 * The safe range of each threshold for this machine and these thresholds:
 * above max needs break glass. A memory-bearing threshold may grow by the
 * ledger's headroom converted to its unit; never is the current value unsafe
 * by its own range (the ledger check catches an over-budget configuration).
 */
function fazt_safe(thresholds, machine) {
  var m = fazt_machine(machine);
  var t = fazt_complete(thresholds, m);
  var usable = fazt_usable_mb(m.ram_mb);
  var headroom = Math.max(0, usable - fazt_ledger(t, m).total_mb);
  var per_thread = FAZT_THREAD_MB + t.sqlite_cache_mb;
  var connections = t.user_threads + t.cockpit_threads + 2;
  var limits = {
    vfs_cache_mb: [0, t.vfs_cache_mb + Math.floor(headroom)],
    large_file_mb: [1, Math.min(256, Math.floor(headroom / (t.user_threads + t.cockpit_threads)))],
    max_upload_mb: [1, Math.floor(Math.min(usable / 2, m.disk_gb * 1024 / 10))],
    max_concurrent_js: [1, Math.min(t.max_concurrent_js + Math.floor(headroom / t.js_memory_mb),
      Math.floor(m.cpus * 8))],
    js_memory_mb: [4, t.js_memory_mb + Math.floor(headroom / t.max_concurrent_js)],
    js_timeout_ms: [100, 30000],
    sqlite_cache_mb: [0.25, t.sqlite_cache_mb + fazt_quarter(headroom / connections)],
    js_warm_mb: [0, Math.min(16, t.js_warm_mb +
      fazt_quarter(headroom / fazt_warm_contexts(t.user_threads)))],
    user_threads: [2, Math.min(t.user_threads + Math.floor(headroom / (per_thread + t.js_warm_mb)),
      Math.floor(m.cpus * 64))],
    cockpit_threads: [1, Math.min(t.cockpit_threads + Math.floor(headroom / per_thread), 16)],
    maintenance_ratio: [1, 1000],
    connection_limit: [16, t.connection_limit + Math.floor(headroom * 1024 / FAZT_CONNECTION_KB)],
    address_connections: [1, t.connection_limit],
    address_requests_per_s: [10, 100000],
    max_streams: [1, t.max_streams + Math.floor(headroom / FAZT_STREAM_MB)],
    zip_max_unpacked_mb: [1, Math.max(1, Math.floor(m.disk_gb * 1024 / 5))],
    zip_max_ratio: [1, 1000],
    zip_max_entry_ratio: [1, 2000],
    zip_max_entries: [1, Math.max(1000, Math.floor(usable * 128))],
    zip_max_path: [16, 1024]
  };
  var safe = {};
  for (var i = 0; i < FAZT_SCHEMA.length; i++) {
    var s = FAZT_SCHEMA[i], value = t[s.key], range = limits[s.key];
    var low = Math.max(s.min, Math.min(range[0], value));
    var high = Math.min(s.max, Math.max(range[1], value));
    safe[s.key] = [low, high];
  }
  return safe;
}

/* What the simulator shows a visitor: rough, honest estimates. */
function fazt_capabilities(t, machine, ledger) {
  var m = fazt_machine(machine);
  // One Python process is bound by its GIL: past about two cores, more CPUs do not
  // add throughput. Cached small files are answered by the event loop itself (the
  // fast path): about 2,000 a second per core on a busy small host, more when idle.
  var small_file_rps = Math.round(2000 * Math.min(m.cpus, 2));
  // A browsing visitor keeps about two connections open and asks for about
  // half a page asset a second.
  var concurrent_users = Math.max(1, Math.min(Math.floor(t.connection_limit / 2),
    small_file_rps * 2));
  return {
    max_upload_mb: t.max_upload_mb,
    concurrent_users: concurrent_users,
    small_file_rps: small_file_rps,
    concurrent_js: t.max_concurrent_js,
    js_memory_mb: t.js_memory_mb,
    vfs_cache_mb: t.vfs_cache_mb,
    maintenance_db_gb: fazt_round2(m.ram_mb * t.maintenance_ratio / 1024),
    memory_budget_mb: ledger.usable_mb,
    within_budget: ledger.total_mb <= ledger.usable_mb
  };
}

/* The thresholds for a machine, with their ledger, safe ranges and capabilities. */
function fazt_thresholds(machine) {
  var m = fazt_machine(machine);
  var result = fazt_compute(m);
  var ledger = fazt_ledger(result, m);
  var safe = fazt_safe(result, m);
  var capabilities = fazt_capabilities(result, m, ledger);
  result.ledger = ledger;
  result.safe = safe;
  result.capabilities = capabilities;
  return result;
}

function fazt_percent_over(value, limit) {
  if (limit <= 0) { return 100; }
  return Math.round((value - limit) / limit * 100);
}

/*
 * Whether `key` may be set to `value` on this machine, given the other
 * thresholds: invalid (refused even with break glass), needs break glass
 * (outside the safe range, or more memory than the budget), or ok.
 */
function fazt_check(key, value, thresholds, machine) {
  var m = fazt_machine(machine);
  var s = fazt_schema_entry(key);
  var current = fazt_complete(thresholds, m);
  var before = fazt_ledger(current, m);
  var result = {
    ok: false, needs_break_glass: false, invalid: true, message: "",
    ledger_total_mb: before.total_mb, usable_mb: before.usable_mb
  };
  if (s === null) {
    result.message = "There is no threshold named " + JSON.stringify(String(key)) + ".";
    return result;
  }
  var kind = s.integer ? "a whole number" : "a number";
  var wrong = typeof value !== "number" || !isFinite(value) ||
    (s.integer && Math.floor(value) !== value) || value < s.min || value > s.max;
  if (wrong) {
    result.message = s.key + " must be " + kind + " from " + s.min + " to " + s.max +
      " " + s.unit + "; " + JSON.stringify(value === undefined ? null : value) +
      " is refused even with break glass.";
    return result;
  }
  result.invalid = false;

  var changed = fazt_complete(current, m);
  changed[key] = value;
  var after = fazt_ledger(changed, m);
  var range = fazt_safe(current, m)[key];
  result.ledger_total_mb = after.total_mb;

  var reasons = [];
  if (value > range[1]) {
    reasons.push(s.label + " " + value + " " + s.unit + " is past the safe maximum of " +
      range[1] + " " + s.unit + " for this machine (" +
      fazt_percent_over(value, range[1]) + "% over).");
  } else if (value < range[0]) {
    reasons.push(s.label + " " + value + " " + s.unit + " is below the safe minimum of " +
      range[0] + " " + s.unit + " for this machine.");
  }
  var over_budget = after.total_mb > after.usable_mb && after.total_mb > before.total_mb;
  if (over_budget) {
    reasons.push("This allows " + Math.round(after.total_mb) + " MB against a budget of " +
      Math.round(after.usable_mb) + " MB: " + fazt_percent_over(after.total_mb, after.usable_mb) +
      "% over, the process may be killed for lack of memory.");
  }
  if (reasons.length > 0) {
    result.needs_break_glass = true;
    result.message = reasons.join(" ") + " Confirm with break glass to apply it anyway.";
  } else {
    result.ok = true;
    result.message = s.label + " " + value + " " + s.unit + " is within the safe range (" +
      range[0] + " to " + range[1] + " " + s.unit + "); this allows " +
      Math.round(after.total_mb) + " MB against a budget of " + Math.round(after.usable_mb) +
      " MB.";
  }
  return result;
}

/* Fill in each schema default from the formula for the reference machine. */
(function () {
  var reference = fazt_compute(FAZT_REFERENCE_MACHINE);
  for (var i = 0; i < FAZT_SCHEMA.length; i++) {
    FAZT_SCHEMA[i]["default"] = reference[FAZT_SCHEMA[i].key];
  }
}());
