// Postern's dashboard: the session's CSRF token on every htmx request, and times shown in
// the browser's zone (UTC stays on hover). No inline script anywhere: the CSP forbids it.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    var token = csrfToken();
    if (token) {
      event.detail.headers["X-CSRF-Token"] = token;
    }
  });

  function localTimes(root) {
    var times = root.querySelectorAll("time[datetime]:not([data-local])");
    for (var i = 0; i < times.length; i++) {
      var element = times[i];
      var utc = element.getAttribute("datetime");
      var moment = new Date(utc);
      if (isNaN(moment.getTime())) {
        continue;
      }
      element.textContent = moment.toLocaleString(undefined, {
        dateStyle: "medium",
        timeStyle: "short",
      });
      element.setAttribute("title", utc.replace("T", " ").replace("Z", " UTC"));
      element.setAttribute("data-local", "");
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
  });
  document.addEventListener("htmx:afterSettle", function (event) {
    localTimes(event.target);
  });
})();
