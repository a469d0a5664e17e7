"""API keys: creation (plaintext shown once), SHA-256 hashed storage, authentication, revocation."""

from facefleet.platform.auth.service import (
    API_KEY_PREFIX,
    DEVICE_TOKEN_PREFIX,
    ROLES,
    authenticate,
    create_api_key,
    create_api_key_audited,
    get_api_key,
    hash_token,
    list_api_keys,
    revoke_api_key,
    revoke_api_key_audited,
)

__all__ = [
    "API_KEY_PREFIX",
    "DEVICE_TOKEN_PREFIX",
    "ROLES",
    "authenticate",
    "create_api_key",
    "create_api_key_audited",
    "get_api_key",
    "hash_token",
    "list_api_keys",
    "revoke_api_key",
    "revoke_api_key_audited",
]
