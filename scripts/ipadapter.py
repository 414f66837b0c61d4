"""IP-Adapter for the AUTOMATIC1111 WebUI, Forge and Forge's forks: a thin script that delegates
to ``ipadapter_ext``.

Only ``modules.scripts`` is imported from the WebUI here (as a module, so that no base class is
registered a second time); the host module (``ipadapter_ext.host.a1111``, ``.forge`` or
``.forge1``) is chosen once, at import, by the modules the host provides, and the console says
which family was found.
"""

from modules import scripts

from ipadapter_ext.host import select, startup_line

host = select()
print(startup_line())


class IPAdapterScript(scripts.Script):
    def title(self):
        return "IP-Adapter"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return host.build_ui(self, is_img2img)

    def process(self, p, *args):
        host.process(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        host.before_sampling(p)

    def postprocess(self, p, processed, *args):
        host.postprocess(p, processed)


host.register_callbacks()
