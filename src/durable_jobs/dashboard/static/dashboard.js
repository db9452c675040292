// Live updates for the dashboard: every few seconds, re-fetch the page's live region
// as an HTML fragment (rendered and escaped by the server) and swap it in. No build
// step, no library. Refreshing pauses while the tab is hidden or a field inside the
// region has focus, and on the Pause button.
(function () {
  "use strict";

  var region = document.getElementById("live");
  var status = document.getElementById("live-status");
  var state = document.getElementById("live-state");
  var toggle = document.getElementById("live-toggle");
  var paused = false;
  var busy = false;

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  function show(text) {
    state.textContent = text;
  }

  function editing() {
    var active = document.activeElement;
    return active && region.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
  }

  function refresh() {
    if (paused || busy || document.hidden || editing()) {
      return;
    }
    busy = true;
    fetch(fragmentUrl(), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        region.innerHTML = html;
        show("live · " + new Date().toLocaleTimeString());
      })
      .catch(function () {
        show("offline");
      })
      .finally(function () {
        busy = false;
      });
  }

  if (region && status) {
    status.hidden = false;
    show("live");
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "Resume" : "Pause";
      show(paused ? "paused" : "live");
      if (!paused) {
        refresh();
      }
    });
    var every = parseInt(region.getAttribute("data-interval"), 10) || 5000;
    window.setInterval(refresh, every);
    document.addEventListener("visibilitychange", refresh);
  }

  // Destructive actions ask first (the form says what with data-confirm).
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });
})();
