"""Credentials: ADC by default, a base64 service-account key when configured; never echoed."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bq_assets.resources.google import (
    CredentialsError,
    ExportBigQueryResource,
    ExportGCSResource,
    service_account_credentials,
)


@pytest.fixture(scope="module")
def encoded_key() -> str:
    """A syntactically real service-account key (a fresh RSA key; no Google account behind it)."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "exporter@acme-prod.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return base64.b64encode(json.dumps(info).encode()).decode()


def test_a_base64_key_becomes_service_account_credentials(encoded_key: str) -> None:
    credentials = service_account_credentials(encoded_key)
    assert credentials.service_account_email == "exporter@acme-prod.iam.gserviceaccount.com"


def test_both_google_clients_use_the_configured_key(encoded_key: str) -> None:
    gcs = ExportGCSResource(project="acme-prod", bucket="b", gcp_credentials=encoded_key)
    assert gcs.get_client()._credentials.service_account_email.startswith("exporter@")
    bigquery = ExportBigQueryResource(project="acme-prod", gcp_credentials=encoded_key)
    with bigquery.get_client() as client:
        assert client._credentials.service_account_email.startswith("exporter@")


@pytest.mark.parametrize(
    "bad",
    ["not base64!!", base64.b64encode(b"{not json").decode(), base64.b64encode(b"{}").decode()],
)
def test_a_bad_key_is_a_clear_error_that_does_not_echo_it(bad: str) -> None:
    with pytest.raises(CredentialsError) as error:
        service_account_credentials(bad)
    assert "GCP_CREDENTIALS_B64 is not a base64-encoded service-account key JSON" in str(
        error.value
    )
    assert bad not in str(error.value)


def test_without_a_key_the_clients_use_application_default_credentials(monkeypatch) -> None:
    calls: list[str] = []

    def fake_default(*args, **kwargs):
        calls.append("adc")
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), "adc-project"

    monkeypatch.setattr("google.auth.default", fake_default)
    ExportGCSResource(project="acme-prod", bucket="b").get_client()
    assert calls == ["adc"]
