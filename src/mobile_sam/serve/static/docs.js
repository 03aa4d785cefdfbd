// Renders the server's OpenAPI document as a plain reference page (no third-party code).
"use strict";

(async () => {
  const main = document.getElementById("endpoints");
  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  };
  let spec;
  try {
    const response = await fetch("/openapi.json");
    spec = await response.json();
  } catch (error) {
    main.replaceChildren(el("p", `Cannot load /openapi.json: ${error.message}`, "status error"));
    return;
  }
  const schemas = (spec.components && spec.components.schemas) || {};
  const resolve = (schema) => {
    while (schema && schema.$ref) schema = schemas[schema.$ref.split("/").pop()];
    return schema || {};
  };
  const typeOf = (schema) => {
    schema = resolve(schema);
    if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
    if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    if (schema.type === "array") {
      if (schema.prefixItems) return `[${schema.prefixItems.map(typeOf).join(", ")}]`;
      return `${typeOf(schema.items || {})}[]`;
    }
    return schema.title && schema.properties ? schema.title : (schema.type || "any");
  };
  const fieldTable = (schema) => {
    schema = resolve(schema);
    if (schema.anyOf) { // an optional body: the object variant
      schema = resolve(schema.anyOf.find((s) => resolve(s).properties) || {});
    }
    const table = el("table");
    const head = el("tr");
    ["field", "type", "default", "description"].forEach((h) => head.append(el("th", h)));
    table.append(head);
    const required = new Set(schema.required || []);
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      const row = el("tr");
      const cell = el("td");
      cell.append(el("code", name + (required.has(name) ? " *" : "")));
      row.append(cell, el("td", typeOf(prop)),
                 el("td", prop.default === undefined ? "" : JSON.stringify(prop.default)),
                 el("td", prop.description || resolve(prop).description || ""));
      table.append(row);
    }
    return table;
  };

  document.getElementById("title").textContent = `${spec.info.title} API ${spec.info.version}`;
  document.getElementById("description").textContent = spec.info.description || "";
  main.replaceChildren();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const box = el("section", undefined, "endpoint");
      const title = el("h2");
      title.append(el("span", method.toUpperCase(), `method ${method}`), document.createTextNode(path));
      box.append(title, el("p", op.summary || ""));
      if (op.parameters && op.parameters.length) {
        box.append(el("h3", "Parameters"));
        box.append(el("p", op.parameters.map((p) => `${p.name} (${p.in})`).join(", ")));
      }
      if (op.requestBody) {
        for (const [type, media] of Object.entries(op.requestBody.content || {})) {
          box.append(el("h3", `Request body: ${type}`));
          box.append(fieldTable(media.schema || {}));
        }
      }
      box.append(el("h3", "Responses"));
      const list = el("ul");
      for (const [code, response] of Object.entries(op.responses || {})) {
        const media = response.content && Object.values(response.content)[0];
        const schema = media && media.schema ? ` \u2192 ${typeOf(media.schema)}` : "";
        list.append(el("li", `${code}: ${response.description || ""}${schema}`));
      }
      box.append(list);
      main.append(box);
    }
  }
})();
