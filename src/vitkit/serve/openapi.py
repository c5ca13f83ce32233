"""The OpenAPI 3.1 schema of the service (``GET /openapi.json``), written out by hand."""

from __future__ import annotations


def _err(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _upload_body() -> dict:
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


REFUSALS = {"400": _err("not an image, empty upload, bad parameter"), "408": _err("the body came too slowly"),
            "413": _err("body or decoded pixels over the limit"), "415": _err("content type not accepted"),
            "503": _err("loading, busy (queue full), shutting down, or out of memory; see Retry-After"),
            "504": _err("not answered within --timeout-s")}


def _q(name: str, schema: dict, desc: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


def schema() -> dict:
    from .. import __version__

    topk = _q("topk", {"type": "integer", "minimum": 1, "default": 5}, "how many classes to return")
    size = _q("size", {"type": "string", "example": "224x224"}, "an input size the service was started with (--sizes)")
    pred = {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "vitkit serve", "version": __version__,
                 "description": "Image classification and attention maps with a Vision Transformer."},
        "paths": {
            "/v1/classify": {"post": {
                "summary": "top-k classes of one image", "parameters": [topk, size], "requestBody": _upload_body(),
                "responses": {"200": {"description": "the predictions", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "model": {"type": "string"}, "predictions": {"type": "array", "items": pred},
                        "input": {"type": "object"}, "timing": {"type": "object"}}}}}}, **REFUSALS}}},
            "/v1/explain": {"post": {
                "summary": "where the model looked: an overlay PNG or the heat-map as JSON",
                "parameters": [_q("method", {"enum": ["last", "rollout"], "default": "last"}, "attention method"),
                               _q("format", {"enum": ["png", "json"], "default": "png"}, "answer format"),
                               _q("layer", {"type": "integer", "default": -1}, "block index (negative from the end)"),
                               _q("head", {"type": "integer"}, "one head (method last); default: heads averaged"),
                               topk, size],
                "requestBody": _upload_body(),
                "responses": {"200": {"description": "the overlay (PNG) or the grid (JSON)",
                                      "content": {"image/png": {}, "application/json": {}}}, **REFUSALS}}},
            "/v1/model": {"get": {"summary": "architecture, classes and preprocessing",
                                  "responses": {"200": {"description": "the model"}}}},
            "/healthz": {"get": {"summary": "liveness: 200 while the process serves",
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "readiness: 200 once loaded and warmed, 503 before and while draining",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
            "/v2/health/live": {"get": {"summary": "KServe v2 liveness", "responses": {"200": {"description": "live"}}}},
            "/v2/health/ready": {"get": {"summary": "KServe v2 readiness",
                                         "responses": {"200": {"description": "ready"}, "503": {"description": "not"}}}},
            "/v2/models/{name}": {"get": {"summary": "KServe v2 model metadata",
                                          "parameters": [{"name": "name", "in": "path", "required": True,
                                                          "schema": {"type": "string"}}],
                                          "responses": {"200": {"description": "metadata"}, "404": _err("unknown")}}},
            "/v2/models/{name}/infer": {"post": {
                "summary": "KServe v2 inference: one BYTES input of base64-encoded image files; outputs label, score",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "outputs 'label' (BYTES [N, k]) and 'score' (FP32 [N, k])"},
                              "404": _err("unknown model"), **REFUSALS}}},
        },
        "components": {"schemas": {"Error": {"type": "object", "properties": {
            "error": {"type": "string"}, "status": {"type": "integer"}}}}},
    }
