"""Stand-ins for what cannot be installed here: Qdrant (tests.fakes.qdrant) and the Kubernetes API.

``qdrant-openapi-1.19.json`` is Qdrant's REST API description, copied from the Qdrant project
(docs/redoc/master/openapi.json at version 1.19.0, https://github.com/qdrant/qdrant), licensed under
the Apache License 2.0. The fake Qdrant (dbops.sandbox.fake_qdrant) is validated against it in
the tests, so that drift from real Qdrant fails a test.
"""
