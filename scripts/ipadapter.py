"""IP-Adapter for the AUTOMATIC1111 WebUI: a thin script that delegates to ``ipadapter_ext``.

Only ``modules.scripts`` is imported from the WebUI here (as a module, so that no base class is
registered a second time); everything else lives in ``ipadapter_ext.host.a1111``.
"""

from modules import scripts

from ipadapter_ext.host import a1111


class IPAdapterScript(scripts.Script):
    def title(self):
        return "IP-Adapter"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return a1111.build_ui(self, is_img2img)

    def process(self, p, *args):
        a1111.process(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        a1111.before_sampling(p)

    def postprocess(self, p, processed, *args):
        a1111.postprocess(p)


a1111.register_callbacks()
