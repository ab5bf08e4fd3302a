// exec-gateway API docs: Swagger UI (shipped by the swagger-ui-py package, served from this
// gateway: no CDN) on /v1/openapi.json. A token in the URL fragment (/docs#token=...) is
// filled in for "Try it out" as the X-API-Key header; the fragment never reaches a server.
"use strict";

(function () {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) {
    history.replaceState(null, "", location.pathname);  // keep it out of the address bar
  }
  const ui = window.SwaggerUIBundle({
    url: "/v1/openapi.json",
    dom_id: "#swagger-ui",
    validatorUrl: null,  // no call to an outside validator: the page works offline
    deepLinking: false,
    persistAuthorization: false,
    displayRequestDuration: true,
    onComplete: function () {
      if (token) {
        ui.preauthorizeApiKey("apiKey", token);
      }
    },
  });
  window.ui = ui;
})();
