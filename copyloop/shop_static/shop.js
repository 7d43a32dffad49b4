/* The demo shop's own script (no inline scripts under its CSP): the checkout button. */
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("checkout");
    if (!button) return;
    button.addEventListener("click", function () {
      var n = window.copyloop ? window.copyloop.track("purchase", { value: 20 }) : 0;
      document.getElementById("bought").textContent = n ? " purchase sent for " + n + " decision(s)" : " cart is empty";
    });
  });
})();
