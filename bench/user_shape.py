"""A user's public shape as a constant, for the views that answer one without I/O:
the floors (``views``) and the plain DRF peer (``peers.views``)."""

# The size and shape of a user's representation, so rendering costs what it costs there.
CONSTANT_USER = {
    "id": 1,
    "username": "user0000001",
    "email": "user0000001@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "is_active": True,
    "date_joined": "2024-01-01T00:00:00.000000Z",
    "updated_at": "2024-01-01T00:00:00.000000Z",
}
