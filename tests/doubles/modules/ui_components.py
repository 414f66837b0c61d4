"""Double of modules/ui_components.py ``InputAccordion``: a checkbox whose value is the
accordion's open/enabled state, usable as a context manager for its children."""

import gradio as gr


class InputAccordion(gr.Checkbox):
    def __init__(self, value, **kwargs):
        self.accordion_kwargs = {"label": kwargs.get("label", "Accordion"), "open": bool(value)}
        super().__init__(value, **kwargs)
        self._accordion = gr.Accordion(**self.accordion_kwargs)

    def __enter__(self):
        self._accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_value, tb):
        self._accordion.__exit__(exc_type, exc_value, tb)


class ToolButton(gr.Button):
    """Double of ``ToolButton``: a small icon button (the WebUI adds the ``tool`` CSS class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, elem_classes=["tool"], **kwargs)
