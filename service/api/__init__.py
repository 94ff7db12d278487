"""The HTTP face: parse a request, call the data plane (service/dataplane.py), encode the answer.

    app.py        the Litestar app: lifespan, middleware, our own routes (/classify, /models, health, metrics)
    oip.py        the Open Inference Protocol v2 routes (/v2/...), over oip_codec.py's framing
    uploads.py    request bodies: raw, multipart; openapi.py and schemas.py describe them and the answers
    server.py     uvicorn with slow-client limits and a draining shutdown
"""
