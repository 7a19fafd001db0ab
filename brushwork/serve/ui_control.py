"""The txt2img and img2img tabs' "ControlNet" accordion, laid out as the sd-webui-controlnet extension's.

One tab per unit ("ControlNet Unit 0", 1, 2): Enable, the control picture, the preprocessor (module) with the
threshold sliders it has (shown, labelled and ranged per module), the model from ControlNet/ with a reload
button, weight, guidance start/end, control mode, resize mode, preprocessor resolution, Pixel Perfect, and
Preview. Generate reads the units by the names `ui_forms.control_fields` gives, and `recipe_from_form` makes
the enabled ones the Recipe's control_units, so they go to the job queue with the rest of the recipe.

Preview shows the control map the unit would use, made by the Engine's own `ControlUnits.detect` in the
handler's worker thread: a preprocessor is quick and loads no ControlNet, so it needs no place in the queue.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from brushwork.control.preprocessors import PREPROCESSORS, RESIZE_MODES, RESOLUTION, Preprocessor, Slider, module_name
from brushwork.control.units import ControlUnits
from brushwork.errors import BrushworkError
from brushwork.recipe import CONTROL_MODES, ControlUnit
from brushwork.serve.limits import OverLimit
from brushwork.serve.settings import Limits
from brushwork.serve.ui_forms import (
    CONTROL_PREPROCESSING_FIELDS, MODES, control_field, control_fields, control_preprocessing, mask_from_editor,
)
from brushwork.serve.ui_studio import Studio, readable_errors

CONTROL_UNITS = 3  # the extension's default number of units
# `detect` reads only the preprocessing settings: a preview never loads the unit's model, so it needs none.
PREVIEW_MODEL = "none"


def control_accordion(studio: Studio, c: dict[str, Any], kind: str, units: int = CONTROL_UNITS) -> tuple[str, ...]:
    """The accordion, its components put in `c` by form name; returns those names in form order.

    Built after the tab's size sliders (and img2img's pictures), which Preview reads.
    """
    detector = ControlUnits(studio.store)
    with gr.Accordion("ControlNet", open=False, elem_id=f"{kind}-controlnet"):
        with gr.Tabs(elem_id=f"{kind}-control-units"):
            for index in range(units):
                with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{kind}-control-{index}-tab"):
                    _unit(studio, detector, c, kind, index)
    return control_fields(units)


def _unit(studio: Studio, detector: ControlUnits, c: dict[str, Any], kind: str, index: int) -> None:
    def name(field: str) -> str:
        return control_field(index, field)

    element = f"{kind}-control-{index}"
    with gr.Row():
        c[name("image")] = gr.Image(label="Control picture", type="pil", image_mode=None, height=260,
                                    sources=["upload", "clipboard"], elem_id=f"{element}-image")
        preview = gr.Image(label="Preprocessor preview", type="pil", format="png", interactive=False, height=260,
                           buttons=["download", "fullscreen"], elem_id=f"{element}-preview")
    with gr.Row():
        c[name("enable")] = gr.Checkbox(False, label="Enable", elem_id=f"{element}-enable")
        c[name("pixel_perfect")] = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{element}-pixel-perfect")
        show_preview = gr.Button("Preview", size="sm", elem_id=f"{element}-run-preview")
    models = studio.controlnets()
    with gr.Row():
        c[name("module")] = gr.Dropdown(list(PREPROCESSORS), value="none", label="Preprocessor", scale=3,
                                        elem_id=f"{element}-module")
        c[name("model")] = gr.Dropdown(models, value=None, label="Model", info=_models_note(models), scale=3,
                                       elem_id=f"{element}-model")
        refresh = gr.Button("↻", elem_classes="bw-tool", scale=0, elem_id=f"{element}-model-refresh")
    with gr.Row():
        c[name("weight")] = gr.Slider(0, 2, value=1, step=0.05, label="Control Weight", elem_id=f"{element}-weight")
        c[name("guidance_start")] = gr.Slider(0, 1, value=0, step=0.01, label="Starting Control Step",
                                              elem_id=f"{element}-guidance-start")
        c[name("guidance_end")] = gr.Slider(0, 1, value=1, step=0.01, label="Ending Control Step",
                                            elem_id=f"{element}-guidance-end")
    with gr.Row():
        c[name("processor_res")] = gr.Slider(RESOLUTION.minimum, RESOLUTION.maximum, value=RESOLUTION.default,
                                             step=RESOLUTION.step, label="Preprocessor Resolution",
                                             visible=_shows_resolution(PREPROCESSORS["none"], False),
                                             elem_id=f"{element}-processor-res")
        # No ↺: it would go back to the page's first value, not the module's default (nor always in its range).
        c[name("threshold_a")] = gr.Slider(0, 1, label="Threshold A", visible=False, buttons=[],
                                           elem_id=f"{element}-threshold-a")
        c[name("threshold_b")] = gr.Slider(0, 1, label="Threshold B", visible=False, buttons=[],
                                           elem_id=f"{element}-threshold-b")
    c[name("control_mode")] = gr.Radio(list(CONTROL_MODES), value="Balanced", label="Control Mode",
                                       elem_id=f"{element}-control-mode")
    c[name("resize_mode")] = gr.Radio(list(RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                                      elem_id=f"{element}-resize-mode")

    settings = [c[name(field)] for field in ("threshold_a", "threshold_b", "processor_res")]
    c[name("module")].change(module_settings, inputs=[c[name("module")], c[name("pixel_perfect")]], outputs=settings,
                             show_progress="hidden", queue=False)
    c[name("pixel_perfect")].change(resolution_setting, inputs=[c[name("module")], c[name("pixel_perfect")]],
                                    outputs=c[name("processor_res")], show_progress="hidden", queue=False)

    def reload(current: str | None) -> Any:
        names = studio.controlnets()
        return gr.Dropdown(choices=names, value=current if current in names else None, info=_models_note(names))

    refresh.click(reload, inputs=c[name("model")], outputs=c[name("model")], show_progress="hidden")

    # What Preview reads: the unit's picture and preprocessing, the tab's size and, in img2img, its pictures.
    preview_names = [name("image"), *(name(field) for field in CONTROL_PREPROCESSING_FIELDS), "width", "height"]
    if kind == "img2img":
        preview_names += ["mode", "init_image", "inpaint"]

    @readable_errors
    def preview_map(*values: Any) -> Image.Image:
        return control_map(detector, studio.settings.limits, dict(zip(preview_names, values)), index)

    show_preview.click(preview_map, inputs=[c[field] for field in preview_names], outputs=preview)


def _models_note(models: list[str]) -> str | None:
    return None if models else "no ControlNet models: add them to the models folder's ControlNet/, then ↻"


def _preprocessor(module: str | None) -> Preprocessor:
    return PREPROCESSORS[module_name(module or "none")]


def _shows_resolution(preprocessor: Preprocessor, pixel_perfect: bool) -> bool:
    """The resolution slider shows where the module uses it and Pixel Perfect does not pick it instead."""
    return preprocessor.uses_resolution and not pixel_perfect


def resolution_setting(module: str | None, pixel_perfect: bool) -> gr.Slider:
    return gr.Slider(visible=_shows_resolution(_preprocessor(module), pixel_perfect))


def module_settings(module: str | None, pixel_perfect: bool) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    """The updates for (threshold A, threshold B, resolution) when the preprocessor changes: each threshold
    shows with the module's label, range and default, or hides where the module has no such slider."""
    preprocessor = _preprocessor(module)
    return (_threshold(preprocessor.threshold_a), _threshold(preprocessor.threshold_b),
            resolution_setting(module, pixel_perfect))


def _threshold(slider: Slider | None) -> gr.Slider:
    if slider is None:
        return gr.Slider(visible=False)
    return gr.Slider(minimum=slider.minimum, maximum=slider.maximum, value=slider.default, step=slider.step,
                     label=slider.name, visible=True)


def control_map(detector: ControlUnits, limits: Limits, form: dict[str, Any], index: int) -> Image.Image:
    """Unit `index`'s control map for the form's picture size, as the Engine makes it for the job.

    A unit without a picture previews img2img's own picture, which it would use. A size of 0 (the model's
    native size, known only once the Engine loads the model) previews at the picture's own size.
    """
    picture = form.get(control_field(index, "image"))
    if picture is None and form.get("mode") in MODES:
        picture = mask_from_editor(form.get("inpaint"))[0] if form["mode"] == "inpaint" else form.get("init_image")
    if picture is None:
        raise BrushworkError(f"ControlNet Unit {index}: upload a picture to preview its control map")
    if max(picture.size) > limits.max_image_side:
        raise OverLimit(f"the control picture is {picture.width}x{picture.height}, over this server's limit of "
                        f"{limits.max_image_side} pixels on a side")
    width, height = int(form.get("width") or 0), int(form.get("height") or 0)
    if not (width and height):
        width, height = picture.size
    unit = ControlUnit(model=PREVIEW_MODEL, **control_preprocessing(form, index))
    return detector.detect(unit, picture, width, height)
