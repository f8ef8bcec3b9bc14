"""The API's OpenAPI description (drf-spectacular), in three parts: the shapes it
names (``components``), what each operation of ``users.api.UserViewSet`` answers
(``operations``), and the view that serves it (``view``), which builds it once per
process. The API answers with plain dicts from the reads and writes, so the
response shapes exist for the description only; ``tests/api/test_openapi.py`` holds
them to the API, and ``tests/api/test_generated_client.py`` holds them to what a
generated client can use: one success shape per operation, and error shapes a
client tells apart by trying them in the order given.
"""
