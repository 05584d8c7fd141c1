// Swap in the server-rendered components every 2 s: same origin only, nothing to click.
"use strict";
(function refresh() {
  fetch("/fragment", { cache: "no-store" })
    .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
    .then((text) => {
      document.getElementById("live").innerHTML = text;
      document.title = "datasetd: " + (document.querySelector(".state b") || {}).textContent;
    })
    .catch(() => {})  // the daemon restarting: try again on the next tick
    .finally(() => setTimeout(refresh, 2000));
})();
