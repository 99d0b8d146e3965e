// A tiny back end: counts visits in the site's key-value store.
function handler(request) {
  const visits = (fazt.kv.get("visits") || 0) + 1;
  fazt.kv.set("visits", visits);
  console.log("visit", visits, "from", request.query.name || "someone");
  return { status: 200, body: { hello: request.query.name || "world", visits: visits } };
}
