// The Live page: follows GET /v1/events/stream (same origin, the session's cookie) with the
// page's filters and puts each event at the top of the table, built with textContent only.
// Without this script the page still shows the last events and the charts.
(function () {
  "use strict";

  var MAX_ROWS = 200; // the table keeps the newest; older rows fall off

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "\u2014" : text;
    row.appendChild(td);
    return td;
  }

  function rowOf(event) {
    var row = document.createElement("tr");
    row.setAttribute("data-event-id", event.id);
    row.className = "fresh";
    var time = document.createElement("time");
    time.setAttribute("datetime", event.created_at);
    time.setAttribute("title", event.created_at.replace("T", " ").replace("Z", " UTC"));
    time.textContent = new Date(event.created_at).toLocaleString(undefined, {
      dateStyle: "medium",
      timeStyle: "medium",
    });
    time.setAttribute("data-local", "");
    cell(row, "").replaceChildren(time);
    var badge = document.createElement("span");
    badge.className = "badge " + event.type;
    badge.textContent = event.type;
    cell(row, "").replaceChildren(badge);
    var link = document.createElement("a");
    link.href = "/messages/" + encodeURIComponent(event.message_id);
    link.textContent = event.message_id;
    cell(row, "").replaceChildren(link);
    cell(row, event.recipient);
    cell(row, event.pool);
    var response = event.response;
    cell(row, response ? ((response.code || "") + " " + response.text).trim() : "");
    return row;
  }

  function add(body, event) {
    if (body.querySelector('tr[data-event-id="' + event.id + '"]')) {
      return; // already shown (rendered with the page)
    }
    var empty = body.querySelector("tr.empty");
    if (empty) {
      empty.remove();
    }
    body.insertBefore(rowOf(event), body.firstChild);
    while (body.rows.length > MAX_ROWS) {
      body.deleteRow(body.rows.length - 1);
    }
  }

  function follow(status, body) {
    var url = status.getAttribute("data-stream");
    var last = status.getAttribute("data-last-event-id");
    if (last) {
      url += (url.indexOf("?") < 0 ? "?" : "&") + "last_event_id=" + encodeURIComponent(last);
    }
    var source = new EventSource(url);
    source.onopen = function () {
      status.textContent = "Live: new events appear at the top as they happen.";
    };
    source.onerror = function () {
      status.textContent = "Reconnecting to the event stream\u2026";
    };
    source.onmessage = function (message) {
      add(body, JSON.parse(message.data));
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    var status = document.getElementById("live-status");
    var table = document.getElementById("live-events");
    if (status && table && window.EventSource) {
      follow(status, table.tBodies[0]);
    }
  });
})();
