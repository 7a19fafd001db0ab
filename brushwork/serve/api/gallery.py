"""`/api/v1/gallery` and `/api/v1/images/{id}`: the studio's finished pictures, shared by all its users
(as A1111's outputs folder is), newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel

from brushwork.serve.api.views import ImageView, image_view
from brushwork.serve.deps import Jobs
from brushwork.serve.limits import NotFound

router = APIRouter(tags=["gallery"])


class GalleryPage(BaseModel):
    page: int
    per_page: int
    images: list[ImageView]


@router.get("/gallery", response_model=GalleryPage)
def gallery(jobs: Jobs, page: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
            per_page: Annotated[int, Query(ge=1, le=500)] = 50) -> GalleryPage:
    """One page of pictures, newest first (page 0 is the newest)."""
    records = jobs.gallery(page=page, per_page=per_page)
    return GalleryPage(page=page, per_page=per_page, images=[image_view(record) for record in records])


@router.get("/images/{image_id}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}, "description": "The PNG, infotext included"}})
def image(image_id: str, jobs: Jobs) -> FileResponse:
    path = jobs.image_path(image_id)
    if path is None:
        raise NotFound(f"no image {image_id!r}")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=31536000, immutable"})
