// Live updates for the dashboard: every few seconds, re-fetch the page's live region
// as an HTML fragment (rendered and escaped by the server) and swap it in. No build
// step, no library. Refreshing pauses while the tab is hidden, a field inside the
// region has focus or a button in it is being pressed, and on the Pause button.
(function () {
  "use strict";

  var region = document.getElementById("live");
  var status = document.getElementById("live-status");
  var state = document.getElementById("live-state");
  var toggle = document.getElementById("live-toggle");
  var paused = false;
  var busy = false;
  // A swap between a button's press and its release would drop the click: the release
  // would land on the new copy of the button, and no click reaches either.
  var pressing = false;

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

  function stopped() {
    return paused || document.hidden || editing();
  }

  function refresh() {
    if (busy || stopped()) {
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
        if (pressing || stopped()) {
          return;  // a press is short: the next refresh brings it
        }
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
    region.addEventListener("pointerdown", function () {
      pressing = true;
    });
    // The click follows the release in the same task: clear the flag after it.
    ["pointerup", "pointercancel"].forEach(function (name) {
      document.addEventListener(name, function () {
        window.setTimeout(function () {
          pressing = false;
        }, 0);
      });
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
