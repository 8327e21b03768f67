"""Gradio app / Hugging Face Space for cfd: text-to-3D by Consistent Flow Distillation.

Layout and event wiring only: ``cfd.params`` and ``cfd.request`` define, default
and check every request (shared with the CLI), ``cfd.backends`` holds the models,
``cfd.runner`` runs it (worker threads, Stop per
session, temp folders and their sweep). API and settings: README.md.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import gradio as gr
from gradio import processing_utils

from cfd import backends, params
from cfd import request as rq
from cfd.errors import Failure, failure
from cfd.runner import Cancelled, Compared, Done, Item, Runner, Stage, Step, compare_table
from cfd.settings import setting

try:  # ZeroGPU on Hugging Face Spaces; a no-op elsewhere
    import spaces

    gpu = spaces.GPU(duration=setting("CFD_GPU_DURATION"))
except ImportError:  # pragma: no cover - depends on the host
    def gpu(fn):
        return fn

EXAMPLES_FILE = Path(__file__).resolve().parent / "assets" / "examples.json"
HISTORY_SIZE = 6
PROGRESS_EVERY_S = 0.25
RUNNER: Runner      # built with the demo (its root honours CFD_RUNS_DIR then)
PRIOR_NOTES: dict[str, str] = {}   # per backend: what its prompts can name (filled by build_demo)
# gsplat.js (Model3D's splat viewer) paints its canvas black whatever clear_color says;
# gallery captions wrap instead of being cut
CSS = """#model3d canvas { background: #ffffff !important; }
#compare-gallery .caption-label, #history .caption-label { white-space: normal; max-width: 100%; }"""
INTRO = """# Consistent Flow Distillation — text to 3D Gaussian splats
Each step renders the splats from random views, noises the renders with a **noise field stuck to the
object's surface** and an annealed timestep, and pulls them towards the diffusion model's denoised images:
every seed follows the probability-flow ODE to its own sharp object (CFD), where SDS averages modes."""


def _error(f: Failure) -> gr.Error:
    return gr.Error(f.message, title=f.title, print_exception=False)


def _session(request) -> str | None:
    return getattr(request, "session_hash", None)


def _prepared(values: dict, compare: bool = False):
    """(request[, methods, n_seeds], guidance) or gr.Error — before any folder exists."""
    try:
        parsed = rq.parse_compare(values) if compare else (rq.parse_request(values),)
        return (*parsed, backends.prepare(parsed[0]))
    except Exception as exc:  # noqa: BLE001 - every refusal becomes a clear message
        raise _error(failure(exc)) from None


def _events(events, progress):
    """The runner's events, with gr.Progress fed; Failure becomes gr.Error. Steps
    without a preview pass at most every PROGRESS_EVERY_S (each update costs the
    server's thread time that the run needs)."""
    shown = 0.0
    try:
        for event in events:
            if isinstance(event, Step):
                if event.preview is None and time.monotonic() - shown < PROGRESS_EVERY_S:
                    continue
                shown = time.monotonic()
                progress(event.fraction, desc=f"Distilling · t = {event.t}"
                         + (f" · run {event.job + 1}/{event.jobs}" if event.jobs > 1 else ""))
            elif isinstance(event, Stage):
                progress((event.done, event.total), desc=event.label)
            yield event
    except Failure as f:
        raise _error(f) from None


def _cached(path) -> str:
    """A copy in gradio's cache (outlives the run's folder: the session history)."""
    return processing_utils.save_file_to_cache(path, processing_utils.get_upload_folder())


def _entry(done: Done) -> dict:
    f = {key: _cached(path) for key, path in done.files.items()}   # each file copied (and hashed) once
    return {"caption": done.caption, "status": done.status, "summary": done.summary,
            "image": processing_utils.save_img_array_to_cache(done.image, processing_utils.get_upload_folder(),
                                                              format="png"),
            "viewer": f["viewer_ply"], "glb": f.get("glb"), "render": f["render_mp4"], "noise": f["noise_mp4"],
            "downloads": [f[key] for key in done.download_keys]}


TEXT_PARAMS = ("prompt", "negative_prompt", "method", "backend")
COMPARE_PARAMS = ("prompt", "seed", "steps", "guidance_scale", "methods", "backend", "n_seeds", "negative_prompt",
                  "res", "views", "t_start", "t_end", "lr_scale", "gamma", "densify_every")
RESULT = ("image", "viewer", "glb", "render", "noise", "downloads", "summary", "status")


# ------------------------------------------------------------------ handlers

@gpu
def generate(prompt=None, seed=None, steps=None, guidance_scale=None, method=None, backend=None,
             negative_prompt=None, res=None, views=None, t_start=None, t_end=None, lr_scale=None, gamma=None,
             densify_every=None, progress=gr.Progress(), request: gr.Request = None):
    """API: distil one scene; yields (viewer_ply, render_video, noise_video, summary, downloads, status)."""
    values = {k: v for k, v in locals().items() if k in params.PARAM_NAMES}
    req, guidance = _prepared(values)
    for event in _events(RUNNER.generate(req, guidance, _session(request), config=req.config()), progress):
        if isinstance(event, Done):
            f = event.files
            yield (str(f["viewer_ply"]), str(f["render_mp4"]), str(f["noise_mp4"]), event.summary,
                   event.downloads, event.status)
        elif isinstance(event, Cancelled):
            yield None, None, None, {"cancelled": True, "steps_done": event.steps_done}, None, event.status
        else:
            yield (gr.skip(),) * 6


@gpu
def generate_ui(*args, progress=gr.Progress(), request: gr.Request = None):
    """The Generate button: outputs (image, splats, mesh, videos, downloads,
    summary, status) + history; the last finished result stays until a new one."""
    *values, history = args
    req, guidance = _prepared(dict(zip(params.PARAM_NAMES, values)))
    skip = (gr.skip(),) * 10
    yield *skip[:7], f"**Running** · {req.label()} on {params.BACKEND_NAMES[req.backend]} …", *skip[8:]
    for event in _events(RUNNER.generate(req, guidance, _session(request)), progress):
        if isinstance(event, Step) and event.preview is not None:
            yield event.preview, *skip[1:]
        elif isinstance(event, Stage) and event.done <= 1:
            yield *skip[:7], f"**{event.label}** …", *skip[8:]
        elif isinstance(event, Done):
            history = [_entry(event), *history][:HISTORY_SIZE]
            yield (*(history[0][k] for k in RESULT), [(h["image"], h["caption"]) for h in history], history)
        elif isinstance(event, Cancelled):
            yield (history[0]["image"] if history else None), *skip[1:7], event.status, *skip[8:]
        else:
            yield skip
    # gradio re-sends a generator's last output on completion; a repeated Model3D mesh
    # value cancels its viewer's lazy load, so the last output changes nothing
    yield skip


def show_history(history, evt: gr.SelectData):
    """A click on the session's history shows that result again."""
    entry = history[evt.index]
    if not all(Path(entry[k]).is_file() for k in ("viewer", "render", "noise")):
        raise gr.Error("That result's files have expired (older than an hour); generate it again.",
                       print_exception=False)
    return tuple(entry[k] for k in RESULT)


@gpu
def compare(prompt=None, seed=None, steps=None, guidance_scale=None, methods=None, backend=None, n_seeds=None,
            negative_prompt=None, res=None, views=None, t_start=None, t_end=None, lr_scale=None, gamma=None,
            densify_every=None, progress=gr.Progress(), request: gr.Request = None):
    """API: the same request for several seeds and methods; yields (gallery of
    orbit GIFs, table, status) as runs finish."""
    values = {k: v for k, v in locals().items() if k in (*params.PARAM_NAMES, "methods", "n_seeds")}
    for gallery, table, status, _ in _compare(values, progress, request):
        yield gallery, table, status


@gpu
def compare_ui(*args, progress=gr.Progress(), request: gr.Request = None):
    *values, n_seeds, methods = args
    values = {**dict(zip(params.PARAM_NAMES, values)), "n_seeds": n_seeds, "methods": methods or []}
    values.pop("method")
    reset = gr.Button("Use the selected seed", interactive=False)
    for gallery, table, status, items in _compare(values, progress, request):
        yield gallery, table, status, items, reset
        reset = gr.skip()


def _compare(values, progress, request):
    """(gallery, table, status, the runs' request values) per update of a seed comparison."""
    base, methods, n_seeds, guidance = _prepared(values, compare=True)
    items: list[Item] = []
    total = len(methods) * n_seeds
    yield gr.Gallery(value=[], columns=n_seeds), "", f"**Running** {total} runs …", []
    for event in _events(RUNNER.compare(base, methods, n_seeds, guidance, _session(request)), progress):
        if isinstance(event, Item):   # runs finish in any order side by side: shown in method, seed order
            items = sorted([*items, event], key=lambda i: (methods.index(i.request.method), i.request.seed))
            status = f"**Running** · {len(items)}/{total} done …"
        elif isinstance(event, Compared):
            status = (f"**Done** · {len(items)} runs in {event.seconds:.0f} s — click a result, then *Use seed …* "
                      "to take it to Generate")
        elif isinstance(event, Cancelled):
            status = "**Cancelled**"
        else:   # a step or heartbeat: nothing new to show
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            continue
        yield ([(str(i.gif), i.caption) for i in items], compare_table(items), status,
               [i.request.values() for i in items])


def pick(items, evt: gr.SelectData):
    if not items or evt.index >= len(items):
        return None, gr.skip()
    v = items[evt.index]
    return v, gr.Button(f"Use seed {v['seed']} ({v['method']}) in Generate", interactive=True)


def use_seed(v):
    if not v:
        return (gr.skip(),) * 4
    return v["seed"], v["method"], gr.Tabs(selected="result"), \
        f"Seed {v['seed']} with {v['method']} set from the comparison — press **Generate**."


def stop(history, status_text, compare_text, request: gr.Request = None):
    """The Stop button: stop this session's runs (gradio also cancels its events,
    so the statuses still showing work in progress, "…", say it); the last
    finished result stays."""
    RUNNER.stop(_session(request))
    busy = [(text or "").rstrip().endswith("…") for text in (status_text, compare_text)]
    image = (history[0]["image"] if history else None) if busy[0] else gr.skip()
    return (image, "**Cancelled** — the run was stopped and its temp files removed; the last finished result stays."
            if busy[0] else gr.skip(), "**Cancelled**" if busy[1] else gr.skip())


def on_backend(backend, prompt):
    """Switching backend resets the backend-dependent settings to its defaults (and
    a prompt left at another backend's default to this one's)."""
    b = backend if backend in params.BACKENDS else "exact"
    d = params.defaults(b)
    new_prompt = d["prompt"] if prompt in ("", *(params.defaults(o)["prompt"] for o in params.BACKENDS)) else gr.skip()
    return (gr.Dropdown(choices=params.res_choices(b), value=d["res"]), d["steps"], d["views"], d["guidance_scale"],
            d["negative_prompt"], d["t_end"], d["densify_every"], new_prompt,
            gr.Markdown(PRIOR_NOTES[b], visible=bool(PRIOR_NOTES[b])))


# ------------------------------------------------------------------ layout

def _examples(kind: str) -> list[list]:
    """Example rows (prompt, backend, method, seed) of assets/examples.json."""
    try:
        return [[e["prompt"], kind, e.get("method", "cfd"), e.get("seed", 0)]
                for e in json.loads(EXAMPLES_FILE.read_text()).get(kind, [])]
    except (OSError, ValueError, KeyError):
        return []


def _field(name: str, d: dict, **kw):
    """The input of request parameter ``name``: label and help from the request layer."""
    kw = {"label": next(p.label for p in params.PARAMS if p.name == name), "info": params.help_text(name),
          "elem_id": name.replace("_", "-"), **kw}
    if name in ("res", "views"):
        choices = params.res_choices("exact") if name == "res" else list(range(params.VIEWS_RANGE[0], params.VIEWS_RANGE[1] + 1))
        return gr.Dropdown(choices, value=d[name], **kw)
    return (gr.Textbox if name in TEXT_PARAMS else gr.Number)(value=d[name], **kw)


def build_demo() -> gr.Blocks:
    global RUNNER
    RUNNER = Runner()
    RUNNER.sweep()
    # the first run's references, rendered in the background; not a daemon, so a process that exits
    # at once waits for it (seconds) instead of being aborted in the middle of a torch op
    threading.Thread(target=backends.warm_up, name="cfd-warm-up").start()
    RUNNER.workers.start(rq.parse_request().values())   # Compare's worker processes, warmed up the same way
    sd_problem, tiny_problem = backends.sd_problem(), backends.tiny_sd_problem()
    prior = backends.exact_prior()
    families = prior.vocabulary.describe()
    PRIOR_NOTES.update({
        "exact": f"**The exact prior knows:** {families}. Name one or more of them (every variant of the family), "
                 "a variant (e.g. 'a pink duck'), or a theme; other prompts are refused.",
        "tiny-sd": f"**tiny-sd** is a miniature Stable Diffusion trained on this app's objects ({families}); it runs "
                   "the whole SD path (text encoder, VAE, UNet) on a CPU. Free text beyond these objects will not "
                   "work. Its model card: `assets/models/tiny-sd/README.md`.",
        "sd": ""})
    d = params.defaults("exact")
    concurrency = setting("CFD_CONCURRENCY")
    methods_choices = [(label, m) for m, label in params.METHOD_LABELS.items()]

    with gr.Blocks(title="cfd — Consistent Flow Distillation", delete_cache=(600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                gr.Markdown("**Backend: exact prior** (embedded, no weights) — Stable Diffusion is not available "
                            "here" + ("" if tiny_problem else "; tiny-sd, a miniature trained on the bundled "
                                      "objects, runs its code path on a CPU") +
                            f".\n\n<details><summary>Why, and how to enable it</summary>\n\n{sd_problem}"
                            "\n\n</details>" if sd_problem else
                            "**Backends:** Stable Diffusion weights found; the exact prior is also available.",
                            elem_id="backend-note")
                choices = [("Exact prior (embedded, no weights)", "exact")]
                choices += [] if tiny_problem else [("tiny-sd (miniature SD, CPU)", "tiny-sd")]
                choices += [] if sd_problem else [("Stable Diffusion", "sd")]
                backend = gr.Radio(choices, value="exact", label="Backend", interactive=len(choices) > 1,
                                   elem_id="backend")
                prior_note = gr.Markdown(PRIOR_NOTES["exact"], elem_id="prior-note")
                prompt = _field("prompt", d, lines=2, max_lines=4, info="Exact prior: the objects or theme to "
                                "make; each seed lands on one of the family's variants (refused if it names "
                                "none it knows). tiny-sd: the same objects' names. SD: any description.")
                negative_prompt = _field("negative_prompt", d, info="Exact prior: objects to steer away from when "
                                         "CFG > 1 (empty: all objects). SD: the unconditional text.")
                method = gr.Radio(methods_choices, value=d["method"], label="Method")
                with gr.Row():
                    seed, steps = _field("seed", d, info=params.range_text("seed")), _field("steps", d)
                with gr.Row():
                    guidance_scale = _field("guidance_scale", d, info=params.help_text("guidance_scale") + ". Exact "
                                            "prior: 1 follows the prompt's objects exactly (sharpest); above 1 "
                                            "also pushes away from the negative prompt's objects.")
                    res, views = _field("res", d), _field("views", d)
                with gr.Accordion("Advanced", open=False):
                    t_start, t_end, lr_scale, gamma = (_field(n, d) for n in ("t_start", "t_end", "lr_scale", "gamma"))
                    densify_every = _field("densify_every", d)
                with gr.Row():
                    run_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                status = gr.Markdown("Ready.", elem_id="status")

            with gr.Column(scale=3, min_width=420):
                with gr.Tabs(elem_id="tabs") as tabs:
                    with gr.Tab("Result", id="result"):
                        with gr.Row():
                            image = gr.Image(label="Live preview / final render", type="numpy", height=340,
                                             interactive=False, elem_id="preview")
                            model3d = gr.Model3D(label="Splats (viewer PLY, half scale; drag to orbit)", height=340,
                                                 clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="model3d")
                        with gr.Row():
                            render_video = gr.Video(label="Orbit render", autoplay=True, loop=True, height=260,
                                                    interactive=False, elem_id="render-video")
                            noise_video = gr.Video(label="Render | the run's noise: CFD's turns with the object, "
                                                         "SDS's flickers",
                                                   autoplay=True, loop=True, height=260, interactive=False,
                                                   elem_id="noise-video")
                        with gr.Row():
                            mesh3d = gr.Model3D(label="Mesh (GLB)", height=300, clear_color=(1.0, 1.0, 1.0, 1.0),
                                                elem_id="mesh3d")
                            with gr.Column():
                                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                                    elem_id="downloads")
                                with gr.Accordion("Run summary (run.json)", open=False):
                                    summary = gr.JSON(show_label=False, elem_id="summary")
                        history_gallery = gr.Gallery(label="This session's results (click to show again)",
                                                     columns=HISTORY_SIZE, height=170, allow_preview=False,
                                                     fit_columns=False, object_fit="contain", elem_id="history")
                    with gr.Tab("Compare seeds", id="compare"):
                        gr.Markdown("The settings on the left for several seeds, per method: CFD's seeds "
                                    "land on different sharp objects (e.g. different cacti for 'a cactus'), "
                                    "SDS's tend to the same one. One row per method; the table counts the "
                                    "different variants each method found; click a result to reuse its seed.")
                        with gr.Row():
                            n_seeds = gr.Dropdown(list(range(1, params.max_seeds() + 1)), value=min(4, params.max_seeds()),
                                                  label="Seeds", info="seed, seed+1, …", elem_id="n-seeds")
                            methods = gr.CheckboxGroup(methods_choices, value=["cfd", "sds"], label="Methods")
                        compare_btn = gr.Button("Compare seeds", variant="primary", elem_id="compare-btn")
                        gallery = gr.Gallery(label="Orbit of each result", columns=min(4, params.max_seeds()),
                                             height="auto", fit_columns=False, allow_preview=False,
                                             object_fit="contain", elem_id="compare-gallery")
                        use_btn = gr.Button("Use the selected seed", interactive=False, elem_id="use-seed")
                        compare_table_md = gr.Markdown(elem_id="compare-table")
                        compare_status = gr.Markdown(elem_id="compare-status")

        gr.Examples(_examples("exact"), [prompt, backend, method, seed], elem_id="examples-exact",
                    label="Examples (exact prior: no weights, CPU-quick)")
        if tiny_problem is None and _examples("tiny-sd"):
            gr.Examples(_examples("tiny-sd"), [prompt, backend, method, seed], elem_id="examples-tiny-sd",
                        label="Examples: tiny-sd (the SD path on a CPU, about a minute)")
        if sd_problem is None and _examples("sd"):
            gr.Examples(_examples("sd"), [prompt, backend, method, seed], label="Examples: Stable Diffusion",
                        elem_id="examples-sd")

        # the public API: parameters default to None (= the backend's default), clean output names
        with gr.Column(visible=False):
            api_in = {n: gr.Textbox(value=None, label=n) if n in TEXT_PARAMS else gr.Number(value=None, label=n)
                      for n in (*params.PARAM_NAMES, "n_seeds")}
            api_in["methods"] = gr.Dropdown(list(params.METHOD_LABELS), value=None, multiselect=True, label="methods")
            api_out = [gr.Model3D(label="viewer_ply"), gr.Video(label="render_video"), gr.Video(label="noise_video"),
                       gr.JSON(label="summary"), gr.File(label="downloads", file_count="multiple"),
                       gr.Markdown(label="status")]
            api_cmp_out = [gr.Gallery(label="gallery"), gr.Markdown(label="table"), gr.Markdown(label="status")]
            api_btn, api_cmp_btn = gr.Button(), gr.Button()

        history, items, picked = gr.State([]), gr.State([]), gr.State(None)
        run = dict(concurrency_id="distill", concurrency_limit=concurrency, preprocess=False,
                   show_progress="minimal")
        named = locals()
        ui_inputs = [named[n] for n in params.PARAM_NAMES]   # the inputs are named after the parameters
        private = dict(api_visibility="private", queue=False)
        result_outputs = [image, model3d, mesh3d, render_video, noise_video, downloads, summary, status]
        api_btn.click(generate, [api_in[n] for n in params.PARAM_NAMES], api_out, api_name="generate", **run)
        api_cmp_btn.click(compare, [api_in[n] for n in COMPARE_PARAMS], api_cmp_out, api_name="compare", **run)
        gen = run_btn.click(generate_ui, ui_inputs + [history], result_outputs + [history_gallery, history],
                            api_visibility="private", show_progress_on=[image], **run)
        cmp = compare_btn.click(compare_ui, ui_inputs + [n_seeds, methods],
                                [gallery, compare_table_md, compare_status, items, use_btn],
                                api_visibility="private", show_progress_on=[compare_status], **run)
        stop_btn.click(stop, [history, status, compare_status], [image, status, compare_status], cancels=[gen, cmp],
                       **private)
        history_gallery.select(show_history, history, result_outputs, **private)
        gallery.select(pick, items, [picked, use_btn], **private)
        use_btn.click(use_seed, picked, [seed, method, tabs, status], **private)
        backend.change(on_backend, [backend, prompt], [res, steps, views, guidance_scale, negative_prompt, t_end,
                                                       densify_every, prompt, prior_note], **private)
    demo.queue(default_concurrency_limit=concurrency, max_size=setting("CFD_QUEUE_SIZE"))
    return demo


def launch_kwargs() -> dict:
    """Launch settings: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured; only
    the run folders' root is served; the app's CSS."""
    kwargs = {"allowed_paths": [str(RUNNER.root)], "show_error": True, "css": CSS}
    if os.environ.get("GRADIO_SERVER_NAME"):
        kwargs["server_name"] = os.environ["GRADIO_SERVER_NAME"]
    if os.environ.get("GRADIO_SERVER_PORT"):
        kwargs["server_port"] = setting("GRADIO_SERVER_PORT")
    return kwargs


demo = build_demo()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
