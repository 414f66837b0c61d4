"""Double of modules/images.py ``resize_image`` (A1111 1.10.1; Forge keeps it), in behaviour, for
the modes the extension uses: 0 stretches; 2 ("resize and fill") scales the image to fit inside
(width, height) keeping its aspect, centres it, and fills the two margins by stretching the
image's first and last rows (or columns). "L" images are resized with Lanczos, no upscaler."""

from PIL import Image


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    if resize_mode == 0:
        return im.resize((width, height), resample=Image.LANCZOS)
    if resize_mode != 2:
        raise NotImplementedError(f"resize mode {resize_mode} is not mirrored here")
    wide_target = width / height > im.width / im.height
    w = im.width * height // im.height if wide_target else width
    h = height if wide_target else im.height * width // im.width
    scaled = im.resize((w, h), resample=Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2
    out.paste(scaled, box=(left, top))
    if not wide_target and top > 0:  # bands above and below from the first and last rows
        out.paste(scaled.resize((width, top), box=(0, 0, width, 0)), box=(0, 0))
        out.paste(scaled.resize((width, top), box=(0, h, width, h)), box=(0, top + h))
    elif wide_target and left > 0:  # bands left and right from the first and last columns
        out.paste(scaled.resize((left, height), box=(0, 0, 0, height)), box=(0, 0))
        out.paste(scaled.resize((left, height), box=(w, 0, w, height)), box=(left + w, 0))
    return out
