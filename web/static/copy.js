// Copy buttons (data-copy="<id of the element holding the value>"): hidden in the page,
// shown here, since they need this script; the value stays selectable text without it.
// navigator.clipboard needs a secure context (https, or localhost): elsewhere the value is
// selected instead, for Ctrl+C. No inline script anywhere: the CSP forbids it.
(function () {
  "use strict";

  function say(button, text) {
    var shown = button.querySelector(".copy-label");
    if (!shown) {
      return;
    }
    shown.textContent = text;
    window.setTimeout(function () {
      shown.textContent = "Copy";
    }, 2000);
  }

  function select(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copy(button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) {
      return;
    }
    var text = source.textContent;
    if (!navigator.clipboard || !window.isSecureContext) {
      select(source);
      say(button, "Selected: press Ctrl+C");
      return;
    }
    navigator.clipboard.writeText(text).then(
      function () {
        say(button, "Copied");
      },
      function () {
        select(source);
        say(button, "Selected: press Ctrl+C");
      }
    );
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
    if (button) {
      copy(button);
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var buttons = document.querySelectorAll("button[data-copy]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].hidden = false;
    }
  });
})();
