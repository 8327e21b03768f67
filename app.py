"""Gradio app / Hugging Face Space for cfd: text-to-3D by Consistent Flow Distillation.

Layout and event wiring only: ``cfd.params`` and ``cfd.request`` define, default
and check every request (shared with the CLI), ``cfd.backends`` holds the models,
``cfd.runner`` runs it (worker threads, Stop per session, what one request may
ask for, temp folders and their sweep). API and settings: README.md.

    demo = create_app()   # the Blocks; builds the UI, starts nothing
    start()               # the engine: runs folder, sweep, warm-up, workers
    demo.launch(**launch_kwargs())

Importing this module builds ``demo`` (the Space's entry) and starts nothing;
``python app.py`` starts the engine and serves it. A handler starts the engine
itself if nothing did (e.g. a demo launched by another script).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import gradio as gr
from gradio import processing_utils

from cfd import backends, params
from cfd import request as rq
from cfd.errors import Failure, failure
from cfd.render import build_cpu_kernel
from cfd.runner import (Artefact, Cancelled, ClientBusy, Compared, Done, Item, Picture, Runner, SessionBusy, Stage,
                        Step, compare_table)
from cfd.settings import SettingError, check_settings, setting

EXAMPLES_FILE = Path(__file__).resolve().parent / "assets" / "examples.json"
HISTORY_SIZE = 6
PROGRESS_EVERY_S = 0.25
RUNNER: Runner | None = None   # the engine, made by start() (its root honours CFD_RUNS_DIR then)
KERNEL_BUILD_S = 300           # the most start-up waits for the C++ kernels' first build
WARM_UP_THREAD = "cfd-warm-up"
_START_LOCK = threading.Lock()
# gsplat.js (Model3D's splat viewer) paints its canvas black whatever clear_color says;
# gallery captions wrap instead of being cut
CSS = """#model3d canvas { background: #ffffff !important; }
#compare-gallery .caption-label, #history .caption-label { white-space: normal; max-width: 100%; }"""
INTRO = """# Consistent Flow Distillation — text to 3D Gaussian splats
Each step renders the splats from random views, noises the renders with a **noise field stuck to the
object's surface** and an annealed timestep, and pulls them towards the diffusion model's denoised images:
every seed follows the probability-flow ODE to its own sharp object (CFD), where SDS averages modes."""


def start() -> Runner:
    """The app's engine, started once: the C++ CPU kernels built if they are not
    (in a child process, bounded by KERNEL_BUILD_S; on a failure every run
    renders with pure torch), so no request waits on a build and every run of
    this process uses one build; the runner (its ``cfd-runs`` folder under
    CFD_RUNS_DIR, swept); its worker processes started, each warming up for the
    default request (the exact prior's references rendered) — or, with one
    worker (every run in this process), that warm-up in a background thread
    here (``wait_warm``). Returns the runner."""
    global RUNNER
    with _START_LOCK:
        if RUNNER is None:
            runner = Runner()
            build_cpu_kernel(KERNEL_BUILD_S)
            runner.sweep()
            runner.workers.warm_values = rq.parse_request().values()
            if runner.workers.size > 1:   # the runs go to the workers: they start and warm up now
                runner.workers.start()
            else:
                # not a daemon: a process that exits at once waits for it (seconds) instead
                # of being aborted in the middle of a torch op
                threading.Thread(target=backends.warm_up, name=WARM_UP_THREAD).start()
            RUNNER = runner
    return RUNNER


def wait_warm(runner: Runner) -> None:
    """Block until ``start``'s warm-up has ended: the workers ready, or the warm-up thread done."""
    if runner.workers.size > 1:
        runner.workers.wait_ready()
    for thread in threading.enumerate():
        if thread.name == WARM_UP_THREAD:
            thread.join()


def _error(f: Failure) -> gr.Error:
    return gr.Error(f.message, title=f.title, print_exception=False)


def _session(request) -> str | None:
    return getattr(request, "session_hash", None)


def _client(request) -> str | None:
    """The address a request came from: the first of X-Forwarded-For where the
    app trusts its proxy (CFD_TRUST_FORWARDED; on by default on a Space, whose
    proxy sets it), else the connection's peer."""
    if request is None:
        return None
    if setting("CFD_TRUST_FORWARDED"):
        forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
        if forwarded:
            return forwarded
    return getattr(getattr(request, "client", None), "host", None)


def _parsed(values: dict, compare: bool):
    """(request, methods, n_seeds) of the values (one method, one seed for a generation)."""
    if compare:
        return rq.parse_compare(values)
    req = rq.parse_request(values)
    return req, [req.method], 1


def _refusal(values: dict, compare: bool, request) -> tuple[str | None, str]:
    """(input, message) when the runner does not admit the request of ``values``
    (``Runner.admit``: the work budget, shown on *steps*; one request per
    session and a few per client address, shown on *prompt*), else (None, "")
    with the session's place held for its handler (``_admitted``). A request
    that does not parse passes: its handler refuses it with the request layer's
    message."""
    runner = start()
    try:
        req, methods, n_seeds = _parsed(values, compare)
        ticket = runner.admit(req, len(methods) * n_seeds, _session(request), _client(request))
    except (rq.OverBudget, SessionBusy, ClientBusy) as exc:
        return ("steps" if isinstance(exc, rq.OverBudget) else "prompt"), str(exc)
    except Exception:  # noqa: BLE001 - refused by the handler, with its message
        return None, ""
    if not _session(request):   # no session to find it by: a check only; the handler takes its own place
        runner.release(ticket)
    return None, ""


def _verdicts(inputs: list, refused, message: str) -> list[dict]:
    """A validator's verdict per input, in order: ``refused`` (one of ``inputs``,
    or None) fails with ``message``, the others pass."""
    return [gr.validate(name != refused, message if name == refused else "") for name in inputs]


def _admission(names: tuple[str, ...], compare: bool = False):
    """The validator of an API endpoint with inputs ``names``: it runs when the
    request is sent, before it waits in the queue, and refuses at once what the
    runner does not admit (``_refusal``), a verdict per input."""
    def admit(*args):
        *values, request = args
        return _verdicts(names, *_refusal(dict(zip(names, values)), compare, request))

    # gradio passes the inputs positionally and injects gr.Request only into a named
    # positional parameter: the validator's signature names each input, then request
    P = inspect.Parameter
    admit.__signature__ = inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD) for n in names] + [
        P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request)])
    admit.__annotations__ = {"request": gr.Request}
    return admit


@contextlib.contextmanager
def _admitted(values: dict, request, compare: bool = False):
    """(request, methods, n_seeds, guidance) of ``values``, while the request
    holds its place (gr.Error when refused) — before any folder exists. The
    place is the one its validator took, or taken now where no validator ran
    (admission is never skipped); it is freed when the block ends, however."""
    runner = start()
    ticket = runner.claim(_session(request))
    try:
        try:
            req, methods, n_seeds = _parsed(values, compare)
            if ticket is None:
                ticket = runner.admit(req, len(methods) * n_seeds, _session(request), _client(request))
            guidance = backends.prepare(req)
        except Exception as exc:  # noqa: BLE001 - every refusal becomes a clear message
            raise _error(failure(exc)) from None
        yield req, methods, n_seeds, guidance
    finally:
        runner.release(ticket)


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


def _optional(files: dict, key: str) -> str | None:
    """An optional artefact's path (None: it could not be made; run.json says why)."""
    return str(files[key]) if key in files else None


def _cached(path) -> str:
    """A copy in gradio's cache (outlives the run's folder: the session history)."""
    return processing_utils.save_file_to_cache(path, processing_utils.get_upload_folder())


def _entry(done: Done) -> dict:
    """A finished run as the session history keeps it, keyed like RESULT."""
    f = {key: _cached(path) for key, path in done.files.items()}   # each file copied (and hashed) once
    return {"caption": done.caption, "status": done.status, "summary": done.summary,
            "image": processing_utils.save_img_array_to_cache(done.image, processing_utils.get_upload_folder(),
                                                              format="png"),
            "viewer": f["viewer_ply"], "glb": f.get("glb"), "render": f.get("render_mp4"), "noise": f.get("noise_mp4"),
            "downloads": [f[key] for key in done.download_keys]}


TEXT_PARAMS = ("prompt", "negative_prompt", "method", "backend")
COMPARE_PARAMS = ("prompt", "seed", "steps", "guidance_scale", "methods", "backend", "n_seeds", "negative_prompt",
                  "res", "views", "t_start", "t_end", "lr_scale", "gamma", "densify_every")
REQUEST_KEYS = (*params.PARAM_NAMES, "methods", "n_seeds")   # what a request (or a comparison) reads
RESULT = ("image", "viewer", "glb", "render", "noise", "downloads", "summary", "status")   # components = history keys
ARTEFACT_VIEWS = {"render_mp4": "render", "noise_mp4": "noise", "glb": "glb"}   # a run's file → the result it shows


# ------------------------------------------------------------------ the public API

def generate(prompt=None, seed=None, steps=None, guidance_scale=None, method=None, backend=None,
             negative_prompt=None, res=None, views=None, t_start=None, t_end=None, lr_scale=None, gamma=None,
             densify_every=None, progress=gr.Progress(), request: gr.Request = None):
    """API: distil one scene; yields (viewer_ply, render_video, noise_video, summary, downloads, status)."""
    values = {k: v for k, v in locals().items() if k in params.PARAM_NAMES}
    outputs = ("viewer_ply", "render_mp4", "noise_mp4", "summary", "downloads", "status")
    with _admitted(values, request) as (req, _, _, guidance):
        for event in _events(start().generate(req, guidance, _session(request), previews=False), progress):
            if isinstance(event, Picture):   # the viewer PLY and the status first, each video when it is made
                yield str(event.viewer), gr.skip(), gr.skip(), event.summary, gr.skip(), event.status
            elif isinstance(event, Artefact) and event.key in outputs:
                yield tuple(str(event.path) if key == event.key else gr.skip() for key in outputs)
            elif isinstance(event, Done):   # every output: a client's predict() returns the last ones
                f = event.files
                yield (str(f["viewer_ply"]), _optional(f, "render_mp4"), _optional(f, "noise_mp4"), event.summary,
                       event.downloads, event.status)
            elif isinstance(event, Cancelled):
                yield None, None, None, {"cancelled": True, "steps_done": event.steps_done}, None, event.status
            else:
                yield (gr.skip(),) * 6


def compare(prompt=None, seed=None, steps=None, guidance_scale=None, methods=None, backend=None, n_seeds=None,
            negative_prompt=None, res=None, views=None, t_start=None, t_end=None, lr_scale=None, gamma=None,
            densify_every=None, progress=gr.Progress(), request: gr.Request = None):
    """API: the same request for several seeds and methods; yields (gallery of
    orbit GIFs, table, status) as runs finish."""
    values = {k: v for k, v in locals().items() if k in REQUEST_KEYS}
    for update in _compare(values, progress, request):
        yield tuple(update.get(k, gr.skip()) for k in ("gallery", "table", "status"))


def _compare(values, progress, request):
    """Updates of a seed comparison: dicts with gallery, table, status and items
    (the runs' request values), or nothing new ({}). Frees the request's place."""
    with _admitted(values, request, compare=True) as (base, methods, n_seeds, guidance):
        items: list[Item] = []
        total = len(methods) * n_seeds
        yield {"gallery": gr.Gallery(value=[], columns=n_seeds), "table": "", "status": f"**Running** {total} runs …",
               "items": []}
        for event in _events(start().compare(base, methods, n_seeds, guidance, _session(request)), progress):
            if isinstance(event, Item):   # runs finish in any order side by side: shown in method, seed order
                items = sorted([*items, event], key=lambda i: (methods.index(i.request.method), i.request.seed))
                status = f"**Running** · {len(items)}/{total} done …"
            elif isinstance(event, Compared):
                status = event.status
            elif isinstance(event, Cancelled):
                status = "**Cancelled**"
            else:   # a step or heartbeat: nothing new to show
                yield {}
                continue
            yield {"gallery": [(str(i.gif), i.caption) for i in items], "table": compare_table(items),
                   "status": status, "items": [i.request.values() for i in items]}


# ------------------------------------------------------------------ the UI's handlers

class Handlers:
    """The UI's event handlers; ``c`` holds the components by name (the
    request's parameters by their own names, outputs by what they show), so
    every handler returns a dict of just the components it changes."""

    def __init__(self, c: dict[str, gr.components.Component]):
        self.c = c

    def out(self, **values) -> dict:
        """An update of the components named in ``values`` (at least one: nothing
        to change is ``gr.skip()``)."""
        return {self.c[name]: value for name, value in values.items()}

    def values(self, inputs: dict, compare: bool = False) -> dict:
        """The request's values of an event's inputs (a dict keyed by component)."""
        names = (*params.PARAM_NAMES, "n_seeds", "methods") if compare else params.PARAM_NAMES
        values = {name: inputs[self.c[name]] for name in names}
        if compare:
            values.pop("method")
            values["methods"] = values["methods"] or []
        return values

    def admit(self, inputs: dict, compare: bool, request) -> list[dict]:
        """The validator of Generate and Compare (see ``_admission``): a verdict
        per input, in the order gradio passes them."""
        field, message = _refusal(self.values(inputs, compare), compare, request)
        return _verdicts(list(inputs), self.c.get(field), message)

    def admit_generate(self, inputs: dict, request: gr.Request = None):
        return self.admit(inputs, False, request)

    def admit_compare(self, inputs: dict, request: gr.Request = None):
        return self.admit(inputs, True, request)

    def generate(self, inputs: dict, progress=gr.Progress(), request: gr.Request = None):
        """The Generate button: the result's components and the history; the
        last finished result stays until a new one."""
        history, shown = inputs[self.c["history"]], set()
        with _admitted(self.values(inputs), request) as (req, _, _, guidance):
            yield self.out(status=f"**Running** · {req.label()} on {params.BACKEND_NAMES[req.backend]} …")
            for event in _events(start().generate(req, guidance, _session(request)), progress):
                if isinstance(event, Step) and event.preview is not None:
                    yield self.out(image=event.preview)
                elif isinstance(event, Picture):   # the final render and the 3D view while the rest is made
                    shown = {"image", "viewer"}
                    yield self.out(image=event.image, viewer=str(event.viewer), render=None, noise=None, glb=None,
                                   downloads=None, status=event.status)
                elif isinstance(event, Artefact) and event.key in ARTEFACT_VIEWS:
                    shown.add(ARTEFACT_VIEWS[event.key])
                    yield self.out(**{ARTEFACT_VIEWS[event.key]: str(event.path)})
                elif isinstance(event, Done):   # (a view already showing its file is not sent again: it would reload)
                    history = [_entry(event), *history][:HISTORY_SIZE]
                    yield self.out(**{k: history[0][k] for k in RESULT if k not in shown}, history=history,
                                   history_gallery=[(h["image"], h["caption"]) for h in history])
                elif isinstance(event, Cancelled):
                    yield self.out(image=history[0]["image"] if history else None, status=event.status)
                else:
                    yield gr.skip()
        # gradio re-sends a generator's last output on completion; a repeated Model3D mesh
        # value cancels its viewer's lazy load, so the last output changes nothing
        yield gr.skip()

    def show_history(self, history, evt: gr.SelectData):
        """A click on the session's history shows that result again."""
        entry = history[evt.index]
        if not all(Path(entry[k]).is_file() for k in ("viewer", "render", "noise") if entry[k]):
            raise gr.Error("That result's files have expired (older than an hour); generate it again.",
                           print_exception=False)
        return self.out(**{k: entry[k] for k in RESULT})

    def compare(self, inputs: dict, progress=gr.Progress(), request: gr.Request = None):
        values = self.values(inputs, compare=True)
        reset = {"use_btn": gr.Button("Use the selected seed", interactive=False)}
        for update in _compare(values, progress, request):
            if not update and not reset:
                yield gr.skip()
                continue
            yield self.out(**{"compare_" + k if k in ("table", "status") else k: v for k, v in update.items()},
                           **reset)
            reset = {}

    def pick(self, items, evt: gr.SelectData):
        if not items or evt.index >= len(items):
            return self.out(picked=None)
        v = items[evt.index]
        return self.out(picked=v, use_btn=gr.Button(f"Use seed {v['seed']} ({v['method']}) in Generate",
                                                    interactive=True))

    def use_seed(self, v):
        if not v:
            return gr.skip()
        return self.out(seed=v["seed"], method=v["method"], tabs=gr.Tabs(selected="result"),
                        status=f"Seed {v['seed']} with {v['method']} set from the comparison — press **Generate**.")

    def stop(self, history, status_text, compare_text, request: gr.Request = None):
        """The Stop button: stop this session's runs (gradio also cancels its
        events, so the statuses still showing work in progress, "…", say it);
        the last finished result stays."""
        start().stop(_session(request))
        busy = [(text or "").rstrip().endswith("…") for text in (status_text, compare_text)]
        out = {}
        if busy[0]:
            out.update(image=history[0]["image"] if history else None, status="**Cancelled** — the run was stopped "
                       "and its temp files removed; the last finished result stays.")
        if busy[1]:
            out.update(compare_status="**Cancelled**")
        return self.out(**out)

    def on_backend(self, backend, prompt):
        """Switching backend resets the backend-dependent settings to its defaults
        (and a prompt left at another backend's default to this one's)."""
        b = backend if backend in params.BACKENDS else "exact"
        d = params.defaults(b)
        out = self.out(res=gr.Dropdown(choices=params.res_choices(b), value=d["res"]),
                       prior_note=gr.Markdown(prior_notes()[b], visible=bool(prior_notes()[b])),
                       **{k: d[k] for k in ("steps", "views", "guidance_scale", "negative_prompt", "t_end",
                                            "densify_every")})
        if prompt in ("", *(params.defaults(o)["prompt"] for o in params.BACKENDS)):
            out[self.c["prompt"]] = d["prompt"]
        return out


# ------------------------------------------------------------------ layout

def prior_notes() -> dict[str, str]:
    """Per backend: what its prompts can name (shown under the backend choice)."""
    families = backends.bundled_objects()
    return {"exact": f"**The exact prior knows:** {families}. Name one or more of them (every variant of the "
                     "family), a variant (e.g. 'a pink duck'), or a theme; other prompts are refused.",
            "tiny-sd": f"**tiny-sd** is a miniature Stable Diffusion trained on this app's objects ({families}); it "
                       "runs the whole SD path (text encoder, VAE, UNet) on a CPU. Free text beyond these objects "
                       "will not work. Its model card: `assets/models/tiny-sd/README.md`.",
            "sd": ""}


def _examples(kind: str) -> list[list]:
    """Example rows (prompt, backend, method, seed) of assets/examples.json."""
    try:
        return [[e["prompt"], kind, e.get("method", "cfd"), e.get("seed", 0)]
                for e in json.loads(EXAMPLES_FILE.read_text()).get(kind, [])]
    except (OSError, ValueError, KeyError):
        return []


def _example_table(kind: str, label: str, c: dict) -> gr.Examples:
    """The examples of backend ``kind``: a click fills in the inputs and, with
    CFD_EXAMPLE_CACHE=1, shows the example's result at once — made by its first
    click (or ahead, ``prefill_examples``) and kept by gradio in a folder keyed
    by ``backends.results_fingerprint`` (new code or a new model: a new folder,
    so the results are made anew)."""
    inputs = [c["prompt"], c["backend"], c["method"], c["seed"]]
    if not setting("CFD_EXAMPLE_CACHE"):
        return gr.Examples(_examples(kind), inputs, elem_id=f"examples-{kind}", label=label)
    base = os.environ.get("GRADIO_EXAMPLES_CACHE") or str(Path(".gradio") / "cached_examples")
    # gradio reads its examples' cache folder from the environment when the table is made
    with mock.patch.dict(os.environ, GRADIO_EXAMPLES_CACHE=str(Path(base) / f"cfd-{backends.results_fingerprint()}")):
        return gr.Examples(_examples(kind), inputs, [c[k] for k in RESULT], fn=example_result,
                           cache_examples=True, cache_mode="lazy", elem_id=f"examples-{kind}", label=label)


def example_result(prompt, backend, method, seed, request: gr.Request = None):
    """An example's result for gradio's example cache: its request (every other
    value its backend's default) generated like the API's, the RESULT
    components' values (copies in gradio's cache)."""
    values = {"prompt": prompt, "backend": backend, "method": method, "seed": seed}
    with _admitted(values, request) as (req, _, _, guidance):
        for event in _events(start().generate(req, guidance, _session(request), previews=False), _no_progress):
            if isinstance(event, Done):
                entry = {**_entry(event), "status": f"**Example** (kept from an earlier run) · {event.status}"}
                return tuple(entry[k] for k in RESULT)
            if isinstance(event, Cancelled):
                raise gr.Error("The example's run was stopped; click the example again.", print_exception=False)
    raise gr.Error("The example's run ended without a result; click the example again.", print_exception=False)


def _no_progress(*args, **kwargs) -> None:
    """A progress callback that shows nothing (an example being cached has no progress bar)."""


def prefill_examples(demo: gr.Blocks) -> threading.Thread:
    """Make the exact prior's example results ahead, in the background, so a
    visitor's first click shows one at once: after the start-up warm-up, one
    example at a time, each started only while no request is admitted or
    running (a visitor's request that comes meanwhile waits for at most the one
    example run under way). Returns the (daemon) thread."""
    examples = demo.cfd_examples.get("exact")

    def fill():
        runner = start()
        wait_warm(runner)
        for index in range(len(examples.examples) if examples is not None and examples.cache_examples else 0):
            while runner.runs() or runner.busy():
                time.sleep(1.0)
            try:
                examples.load_from_cache(index)
            except Exception as exc:  # noqa: BLE001 - a click makes it later, with its own message
                print(f"cfd: example {index} was not made ahead ({type(exc).__name__}: {exc})", file=sys.stderr)

    thread = threading.Thread(target=fill, name="cfd-examples", daemon=True)
    thread.start()
    return thread


def _field(name: str, d: dict, **kw):
    """The input of request parameter ``name``: label and help from the request layer."""
    kw = {"label": next(p.label for p in params.PARAMS if p.name == name), "info": params.help_text(name),
          "elem_id": name.replace("_", "-"), **kw}
    if name in ("res", "views"):
        choices = params.res_choices("exact") if name == "res" else list(range(params.VIEWS_RANGE[0], params.VIEWS_RANGE[1] + 1))
        return gr.Dropdown(choices, value=d[name], **kw)
    return (gr.Textbox if name in TEXT_PARAMS else gr.Number)(value=d[name], **kw)


def _backend_note(sd_problem: str | None, tiny_problem: str | None) -> str:
    if not sd_problem:
        return "**Backends:** Stable Diffusion weights found; the exact prior is also available."
    tiny = "" if tiny_problem else "; tiny-sd, a miniature trained on the bundled objects, runs its code path on a CPU"
    return (f"**Backend: exact prior** (embedded, no weights) — Stable Diffusion is not available here{tiny}."
            f"\n\n<details><summary>Why, and how to enable it</summary>\n\n{sd_problem}\n\n</details>")


def _settings_column(c: dict, d: dict, sd_problem: str | None, tiny_problem: str | None) -> None:
    """The left column: backend, the request's parameters, Generate / Stop, the status."""
    gr.Markdown(_backend_note(sd_problem, tiny_problem), elem_id="backend-note")
    choices = [("Exact prior (embedded, no weights)", "exact")]
    choices += [] if tiny_problem else [("tiny-sd (miniature SD, CPU)", "tiny-sd")]
    choices += [] if sd_problem else [("Stable Diffusion", "sd")]
    c["backend"] = gr.Radio(choices, value="exact", label="Backend", interactive=len(choices) > 1, elem_id="backend")
    c["prior_note"] = gr.Markdown(prior_notes()["exact"], elem_id="prior-note")
    c["prompt"] = _field("prompt", d, lines=2, max_lines=4, info="Exact prior: the objects or theme to make; each "
                         "seed lands on one of the family's variants (refused if it names none it knows). tiny-sd: "
                         "the same objects' names. SD: any description.")
    c["negative_prompt"] = _field("negative_prompt", d, info="Exact prior: objects to steer away from when CFG > 1 "
                                  "(empty: all objects). SD: the unconditional text.")
    c["method"] = gr.Radio([(label, m) for m, label in params.METHOD_LABELS.items()], value=d["method"],
                           label="Method")
    with gr.Row():
        c["seed"], c["steps"] = _field("seed", d, info=params.range_text("seed")), _field("steps", d)
    with gr.Row():
        c["guidance_scale"] = _field("guidance_scale", d, info=params.help_text("guidance_scale") + ". Exact prior: "
                                     "1 follows the prompt's objects exactly (sharpest); above 1 also pushes away "
                                     "from the negative prompt's objects.")
        c["res"], c["views"] = _field("res", d), _field("views", d)
    with gr.Accordion("Advanced", open=False):
        for name in ("t_start", "t_end", "lr_scale", "gamma", "densify_every"):
            c[name] = _field(name, d)
    with gr.Row():
        c["run_btn"] = gr.Button("Generate", variant="primary", elem_id="generate-btn")
        c["stop_btn"] = gr.Button("Stop", variant="stop", elem_id="stop-btn")
    c["status"] = gr.Markdown("Ready.", elem_id="status")


def _result_tab(c: dict) -> None:
    with gr.Row():
        c["image"] = gr.Image(label="Live preview / final render", type="numpy", height=340, interactive=False,
                              elem_id="preview")
        c["viewer"] = gr.Model3D(label="Splats (viewer PLY, half scale; drag to orbit)", height=340,
                                 clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="model3d")
    with gr.Row():
        c["render"] = gr.Video(label="Orbit render", autoplay=True, loop=True, height=260, interactive=False,
                               elem_id="render-video")
        c["noise"] = gr.Video(label="Render | the run's noise: CFD's turns with the object, SDS's flickers",
                              autoplay=True, loop=True, height=260, interactive=False, elem_id="noise-video")
    with gr.Row():
        c["glb"] = gr.Model3D(label="Mesh (GLB)", height=300, clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="mesh3d")
        with gr.Column():
            c["downloads"] = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
            with gr.Accordion("Run summary (run.json)", open=False):
                c["summary"] = gr.JSON(show_label=False, elem_id="summary")
    c["history_gallery"] = gr.Gallery(label="This session's results (click to show again)", columns=HISTORY_SIZE,
                                      height=170, allow_preview=False, fit_columns=False, object_fit="contain",
                                      elem_id="history")


def _compare_tab(c: dict) -> None:
    gr.Markdown("The settings on the left for several seeds, per method: CFD's seeds land on different sharp "
                "objects (e.g. different cacti for 'a cactus'), SDS's tend to the same one. One row per method; "
                "the table counts the different variants each method found; click a result to reuse its seed.")
    with gr.Row():
        c["n_seeds"] = gr.Dropdown(list(range(1, params.max_seeds() + 1)), value=min(4, params.max_seeds()),
                                   label="Seeds", info="seed, seed+1, …", elem_id="n-seeds")
        c["methods"] = gr.CheckboxGroup([(label, m) for m, label in params.METHOD_LABELS.items()],
                                        value=["cfd", "sds"], label="Methods")
    c["compare_btn"] = gr.Button("Compare seeds", variant="primary", elem_id="compare-btn")
    c["gallery"] = gr.Gallery(label="Orbit of each result", columns=min(4, params.max_seeds()), height="auto",
                              fit_columns=False, allow_preview=False, object_fit="contain", elem_id="compare-gallery")
    c["use_btn"] = gr.Button("Use the selected seed", interactive=False, elem_id="use-seed")
    c["compare_table"] = gr.Markdown(elem_id="compare-table")
    c["compare_status"] = gr.Markdown(elem_id="compare-status")


def _api(run: dict) -> None:
    """The public endpoints /generate and /compare: every parameter optional (None
    = the backend's default), clean output names."""
    with gr.Column(visible=False):
        api_in = {n: gr.Textbox(value=None, label=n) if n in TEXT_PARAMS else gr.Number(value=None, label=n)
                  for n in (*params.PARAM_NAMES, "n_seeds")}
        api_in["methods"] = gr.Dropdown(list(params.METHOD_LABELS), value=None, multiselect=True, label="methods")
        api_out = [gr.Model3D(label="viewer_ply"), gr.Video(label="render_video"), gr.Video(label="noise_video"),
                   gr.JSON(label="summary"), gr.File(label="downloads", file_count="multiple"),
                   gr.Markdown(label="status")]
        api_cmp_out = [gr.Gallery(label="gallery"), gr.Markdown(label="table"), gr.Markdown(label="status")]
        api_btn, api_cmp_btn = gr.Button(), gr.Button()
    api_btn.click(generate, [api_in[n] for n in params.PARAM_NAMES], api_out, api_name="generate",
                  validator=_admission(params.PARAM_NAMES), **run)
    api_cmp_btn.click(compare, [api_in[n] for n in COMPARE_PARAMS], api_cmp_out, api_name="compare",
                      validator=_admission(COMPARE_PARAMS, compare=True), **run)


def _wire(c: dict, run: dict) -> None:
    """The UI's events (private: the API is ``_api``'s)."""
    h, private = Handlers(c), dict(api_visibility="private", queue=False)
    inputs = {c[n] for n in params.PARAM_NAMES}   # a set: the handler gets a dict keyed by component
    result = [c[k] for k in RESULT]
    gen = c["run_btn"].click(h.generate, inputs | {c["history"]}, [*result, c["history_gallery"], c["history"]],
                             api_visibility="private", show_progress_on=[c["image"]], validator=h.admit_generate,
                             **run)
    cmp = c["compare_btn"].click(h.compare, inputs | {c["n_seeds"], c["methods"]},
                                 [c[k] for k in ("gallery", "compare_table", "compare_status", "items", "use_btn")],
                                 api_visibility="private", show_progress_on=[c["compare_status"]],
                                 validator=h.admit_compare, **run)
    c["stop_btn"].click(h.stop, [c["history"], c["status"], c["compare_status"]],
                        [c["image"], c["status"], c["compare_status"]], cancels=[gen, cmp], **private)
    c["history_gallery"].select(h.show_history, c["history"], result, **private)
    c["gallery"].select(h.pick, c["items"], [c["picked"], c["use_btn"]], **private)
    c["use_btn"].click(h.use_seed, c["picked"], [c["seed"], c["method"], c["tabs"], c["status"]], **private)
    c["backend"].change(h.on_backend, [c["backend"], c["prompt"]],
                        [c[k] for k in ("res", "steps", "views", "guidance_scale", "negative_prompt", "t_end",
                                        "densify_every", "prompt", "prior_note")], **private)


def create_app() -> gr.Blocks:
    """The app's Blocks: layout, the public API and the UI's events. Builds the
    UI only (reads the bundled objects' names and checks which weights exist);
    starts no thread and makes no folder (``start`` does, on launch or on the
    first request)."""
    sd_problem, tiny_problem = backends.sd_problem(), backends.tiny_sd_problem()
    d = params.defaults("exact")
    concurrency = setting("CFD_CONCURRENCY")
    c: dict[str, gr.components.Component] = {}
    with gr.Blocks(title="cfd — Consistent Flow Distillation", delete_cache=(600, 3600)) as demo:
        demo.cfd_examples = {}   # backend → its gr.Examples (``prefill_examples``)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                _settings_column(c, d, sd_problem, tiny_problem)
            with gr.Column(scale=3, min_width=420):
                with gr.Tabs(elem_id="tabs") as c["tabs"]:
                    with gr.Tab("Result", id="result"):
                        _result_tab(c)
                    with gr.Tab("Compare seeds", id="compare"):
                        _compare_tab(c)
        for kind, label in (("exact", "Examples (exact prior: no weights, CPU-quick)"),
                            ("tiny-sd", "Examples: tiny-sd (the SD path on a CPU, about a minute)"),
                            ("sd", "Examples: Stable Diffusion")):
            available = {"exact": True, "tiny-sd": tiny_problem is None, "sd": sd_problem is None}[kind]
            if available and _examples(kind):
                demo.cfd_examples[kind] = _example_table(kind, label, c)
        c["history"], c["items"], c["picked"] = gr.State([]), gr.State([]), gr.State(None)
        run = dict(concurrency_id="distill", concurrency_limit=concurrency, preprocess=False, show_progress="minimal")
        _api(run)
        _wire(c, run)
        demo.unload(_session_ended)
    # api_open=False: the REST routes (/gradio_api/run/…) would skip the queue and its validators
    demo.queue(default_concurrency_limit=concurrency, max_size=setting("CFD_QUEUE_SIZE"), api_open=False)
    return demo


def _session_ended(request: gr.Request):
    """A closed or reloaded tab: its runs stop and its places are freed (a
    request still queued when the tab closed never reaches its handler)."""
    if RUNNER is not None:
        RUNNER.stop(_session(request))


def launch_kwargs() -> dict:
    """Launch settings: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured; only
    the run folders' root is served; the app's CSS. Starts the engine."""
    # show_error=False: an unexpected exception's text never reaches the page; every
    # failure of a run is a gr.Error with its own words (an internal one: an incident id)
    kwargs = {"allowed_paths": [str(start().root)], "show_error": False, "css": CSS}
    if os.environ.get("GRADIO_SERVER_NAME"):
        kwargs["server_name"] = os.environ["GRADIO_SERVER_NAME"]
    if os.environ.get("GRADIO_SERVER_PORT"):
        kwargs["server_port"] = setting("GRADIO_SERVER_PORT")
    return kwargs


def main() -> int:
    """``python app.py``: check every setting, then serve. A bad setting is one
    message naming it, its range and the fix, and exit status 2 (as the CLI's
    bad flags)."""
    try:
        check_settings()
        app, kwargs = create_app(), launch_kwargs()
    except SettingError as exc:
        print(f"app.py: {exc}", file=sys.stderr)
        return 2
    app.launch(**kwargs, prevent_thread_lock=True)
    prefill_examples(app)
    app.block_thread()
    return 0


if __name__ == "__main__":   # `python app.py`, as the Space runs it: main() builds the app itself
    sys.exit(main())
demo = create_app()   # the app when the module is imported (`gradio app.py`, tests)
