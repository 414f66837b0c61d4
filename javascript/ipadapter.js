// IP-Adapter accordion: hover hints for every unit control, and unit tabs that show which units
// will apply ("Unit 1 ✓") or are enabled but incomplete ("Unit 2 ⚠"), on A1111 and the Forge 1
// family (gradio 3), and Forge and ersatzForge (gradio 4). The WebUI loads every file in an
// extension's javascript/ folder.
(function() {
    "use strict";

    // The unit controls' labels are unique per unit ("Unit 2 weight", "Enable unit 2"), because the
    // WebUI saves UI defaults by label; ipadapter_ext/ui/accordion.py unit_label() makes them.
    var MAX_UNITS = 8;
    var HINTS = {
        "Enable": "Apply this unit. A unit that is ticked but has neither an image nor a model is skipped.",
        "Reference image": "The image prompt. It is resized to the encoder's input (224 px CLIP, 384 px SigLIP) with the Crop mode.",
        "More reference images (optional)": "Further references for this unit; see Combine images under Advanced.",
        "Model": "The IP-Adapter file (models/ipadapter, or IP-Adapter files in models/ControlNet). The line below says what it needs.",
        "Image encoder": "The image encoder (models/clip_vision): CLIP vision, or SigLIP for InstantX and Redux. 'auto' picks the first one that fits the model.",
        "Weight": "How strongly the image prompt acts: about 0.5 beside a text prompt, 1.0 for an image-only prompt.",
        "Start": "Fraction of the sampling steps after which the image prompt starts to act.",
        "End": "Fraction of the sampling steps after which the image prompt stops acting.",
        "Crop": "How the reference is fitted to a square: center, keep one edge, pad with the CLIP mean colour, squash, or tiles (all of a wide or tall reference, one square tile per band of the output).",
        "Weight type": "Which UNet layers the reference reaches: e.g. 'style transfer' takes the style, 'composition' the layout.",
        "Composition weight": "The weight of the layout layers, for the weight types that use it.",
        "Weight mode": "How the weight enters the attention: 'V only' scales the output (the original IP-Adapter).",
        "Combine images": "How several references become one prompt: keep every image's tokens (concat) or merge their embeddings.",
        "Layer weights (optional: 16 numbers for SD1.5, 11 for SDXL; replaces the weight type)": "One factor per cross-attention block, multiplied by Weight. All zeros is exactly no adapter.",
        "Image weights (optional: one per reference image)": "Multiplies each reference image's embedding before combining.",
        "Negative image (optional)": "Encoded as the negative (uncond) side instead of a blank image.",
        "Mask (optional)": "White where this unit acts. Upload a black-and-white mask, or upload a picture and paint over it.",
        "Noise (uncond: the negative image, or the references, blended with noise)": "Blends the negative side with seeded noise; often keeps more of what makes the reference distinct.",
        "Use the img2img input as the reference": "The image you are transforming is the reference (each file of a batch folder is its own). The reference image above is then ignored.",
        "Use the inpaint mask as the mask": "The unit acts only where the WebUI inpaints, with no second mask to draw.",
        "Invert the mask": "The unit acts outside its mask (drawn or inpaint) instead of inside.",
        "FaceID LoRA strength": "FaceID, FaceID-Plus and Plus v2 files carry a LoRA trained with them; it is applied for this generation at this strength. No separate LoRA file or prompt tag is needed.",
        "FaceID v2 weight": "FaceID-Plus v2 only: how much of the face embedding's own tokens is added back after the CLIP refinement.",
        "Strength mode (Redux)": "Flux Redux: the weight is its strength. 'scale' multiplies its tokens; 'attention bias' adds log(strength) to the attention on them, keeping the tokens as they are.",
        "Downsampling (Redux)": "Flux Redux: shrink its 27×27 token grid by this factor (3 leaves 81 tokens): a weaker reference, and faster steps.",
        "Downsampling mode (Redux)": "Flux Redux: how the token grid is resized when downsampling (area averages; bicubic and bilinear interpolate).",
        "Reference mask (optional)": "Use only part of the reference: white is kept, the rest is blanked before encoding. Not where the unit acts.",
        "One reference per batch image": "The reference image, then the more reference images, in order: image i is the reference of batch image i only. Give as many as the batch size.",
        "Style boost": "Precise style transfer: the weight of the reference on the negative side of the layout layers. SDXL: start at 2; SD1.5: between -1 and 1, start at 0.",
        "Composition boost": "Composition precise: the weight of the reference on the negative side of the style layers (a tenth of it on the others). Start at 0.3 (SDXL, weight 0.8) or 0.35 (SD1.5, weight 0.6).",
        "Composition image (optional)": "Its layout replaces the reference's on the composition block; the reference still gives everything else (made for SDXL).",
        "Sharpening (before encoding)": "Contrast-adaptive sharpening of the references at the encoder's 224 px, to keep fine texture.",
        "Noise type": "How the negative side is degraded with the Noise strength: ComfyUI's fade, dissolve, gaussian, shuffle (seeded by the image's seed), or 'noise', the original fixed-seed blend.",
        "Noise blur (pixels)": "Blurs the negative side's image (also without noise), so CFG pushes towards the reference's detail.",
    };
    // Controls whose label gradio does not render as plain text (images, files): hint by elem_id.
    var BY_ID = {
        image: "Reference image",
        more: "More reference images (optional)",
        negative_image: "Negative image (optional)",
        mask: "Mask (optional)",
        reference_mask: "Reference mask (optional)",
        composition_image: "Composition image (optional)",
    };

    function unitLabel(n, text) {
        if (text === "Enable") return "Enable unit " + n;
        var first = text.split(" ")[0].slice(1);
        var keep = first !== first.toLowerCase(); // "FaceID", "LoRA" keep their capital, as in accordion.py
        return "Unit " + n + " " + (keep ? text : text.charAt(0).toLowerCase() + text.slice(1));
    }

    // Every label's hint, by the label's text as the page shows it.
    var LABEL_HINTS = {
        "IP-Adapter": "Image prompts: tick to apply the enabled units below.",
        "Show where each unit acts": "After the images, a heat-map per unit of where its image prompt acted (one scale for all units).",
        "Show the detected faces": "After the images, each FaceID reference with the face that was found: its box, and the aligned crop the adapter saw.",
    };
    for (var n = 1; n <= MAX_UNITS; n++) {
        for (var text in HINTS) {
            LABEL_HINTS[unitLabel(n, text)] = HINTS[text];
        }
    }
    // A1111's and Forge's hints.js keep a global `titles` table and give any element whose text is
    // a key its hint (localized). Hosts that cut hints.js down (ersatzForge) have no such table:
    // there the labels inside the accordion get their hints from hintLabels() below.
    var HOST_TITLES = typeof titles !== "undefined" && titles !== null && typeof titles === "object";
    if (HOST_TITLES) {
        for (var label in LABEL_HINTS) {
            titles[label] = LABEL_HINTS[label];
        }
    }

    function app() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function unitRoot(tab, n) {
        return app().querySelector("#script_" + tab + "_ipadapter_unit_" + n);
    }

    function part(tab, n, name) {
        return app().querySelector("#script_" + tab + "_ipadapter_unit_" + n + "_" + name);
    }

    function hasImage(block) {
        // gradio 3 and 4 both show an uploaded image as an <img> (the empty state is an icon)
        return !!(block && block.querySelector("img"));
    }

    function hasFiles(block) {
        return !!(block && block.querySelector("table tr, .file-preview tr, a[download]"));
    }

    function ticked(tab, n, name) {
        var box = part(tab, n, name);
        box = box && box.querySelector("input[type=checkbox]");
        return !!(box && box.checked);
    }

    function modelChosen(tab, n) {
        var input = part(tab, n, "model");
        input = input && input.querySelector("input");
        return !!(input && input.value && input.value !== "None");
    }

    // "ready": it will apply; "incomplete": enabled, started, but missing an image or a model;
    // "": off (or enabled and untouched, which is skipped).
    function unitState(tab, n) {
        var box = part(tab, n, "enabled");
        box = box && box.querySelector("input[type=checkbox]");
        if (!box || !box.checked) return "";
        var image = hasImage(part(tab, n, "image")) || hasFiles(part(tab, n, "more")) || ticked(tab, n, "image_from_init");
        var model = modelChosen(tab, n);
        if (image && model) return "ready";
        return image || model ? "incomplete" : "";
    }

    var MARKS = {ready: "✓", incomplete: "⚠"};
    var MARK_TITLES = {
        ready: "This unit is enabled and set up: it applies when the IP-Adapter accordion is ticked.",
        incomplete: "This unit is enabled but has no reference image or no model: Generate will stop with a message.",
    };

    function markTabs(tab) {
        var nav = app().querySelector("#script_" + tab + "_ipadapter_units .tab-nav");
        if (!nav) return;
        var buttons = nav.querySelectorAll("button");
        for (var i = 0; i < buttons.length; i++) {
            var button = buttons[i];
            var match = /^Unit (\d+)/.exec(button.textContent.trim());
            if (!match || !unitRoot(tab, match[1])) continue;
            var state = unitState(tab, match[1]);
            var mark = button.querySelector(".ipadapter-tab-mark");
            if (!mark) {
                mark = document.createElement("span");
                mark.className = "ipadapter-tab-mark";
                mark.style.marginLeft = "0.35em";
                button.appendChild(mark);
            }
            if (mark.textContent !== (MARKS[state] || "")) mark.textContent = MARKS[state] || "";
            var title = MARK_TITLES[state] || "";
            if (button.title !== title) button.title = title;
            button.dataset.ipadapterState = state;
        }
    }

    function hintLabels(tab) {
        if (HOST_TITLES) return;
        var root = app().querySelector("#script_" + tab + "_ipadapter_enabled");
        if (!root) return;
        var labels = root.querySelectorAll("span, button, p, label");
        for (var i = 0; i < labels.length; i++) {
            var el = labels[i];
            if (el.title) continue;
            var hint = LABEL_HINTS[el.textContent.trim()];
            if (hint) el.title = hint;
        }
    }

    function hintBlocks(tab) {
        for (var n = 1; n <= MAX_UNITS && unitRoot(tab, n); n++) {
            for (var name in BY_ID) {
                var block = part(tab, n, name);
                if (block && !block.title) block.title = HINTS[BY_ID[name]];
            }
        }
    }

    var pending = null;

    function refresh() {
        pending = null;
        ["txt2img", "img2img"].forEach(function(tab) {
            markTabs(tab);
            hintBlocks(tab);
            hintLabels(tab);
        });
    }

    function schedule() {
        if (pending === null) pending = setTimeout(refresh, 150);
    }

    if (typeof onUiUpdate === "function") onUiUpdate(schedule); // DOM changes: images, dropdowns
    if (typeof onUiLoaded === "function") onUiLoaded(refresh);
    // a checkbox's state is not a DOM change: listen for it (and for dropdown picks) directly
    document.addEventListener("change", schedule, true);
    document.addEventListener("click", schedule, true);
})();
