"""POST /v1/datasets and /v1/datasets/upload with align: real photos, aligned on the server."""

from __future__ import annotations

import shutil

from tests.api.conftest import Api
from tests.faces.subsets import celeba_subset


def test_register_with_align_over_the_api(sqlite_api: Api) -> None:
    api = sqlite_api
    folder = celeba_subset(api.tmp / "celeb", identities=1, images=2)
    response = api.client.post(
        "/v1/datasets",
        headers=api.admin,
        json={"name": "celeb", "source": str(folder), "align": True, "aligner": "mtcnn"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["image_count"] == 2
    alignment = body["report"]["alignment"]
    assert (alignment["aligner"], alignment["aligned"], alignment["no_face"]) == ("mtcnn", 2, 1)

    archive = shutil.make_archive(str(api.tmp / "celeb"), "zip", folder)
    with open(archive, "rb") as handle:
        uploaded = api.client.post(
            "/v1/datasets/upload",
            headers=api.admin,
            data={"name": "celeb-up", "align": "true"},
            files={"file": ("celeb.zip", handle, "application/zip")},
        )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["report"]["alignment"]["aligned"] == 2

    bad = api.client.post(
        "/v1/datasets",
        headers=api.admin,
        json={"name": "x", "source": str(folder), "align": True, "aligner": "no-such-model"},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "aligner"
    assert "no landmark model named 'no-such-model'" in bad.json()["detail"]
