"""Keeps the token cache honest when tokens change outside ``users.services``.

DRF's ``drf_create_token -r`` and the admin delete or create ``Token`` rows
directly; these receivers are the only hook that sees those writes, so each
one drops the token's cached lookup once its transaction commits.
"""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from .services import token_cache_invalidate


@receiver(post_save, sender=Token, dispatch_uid="users.token_saved")
@receiver(post_delete, sender=Token, dispatch_uid="users.token_deleted")
def forget_cached_token(sender, instance: Token, **kwargs) -> None:
    token_cache_invalidate(key=instance.key)
