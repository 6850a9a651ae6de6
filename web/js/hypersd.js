// Hyper-SD frontend extension: migrates Hyper-SD LoRA Loader nodes saved before strength_mode existed.
// Those saved [lora_name, strength_model, strength_clip], where strength_model -1 meant "recommended";
// the frontend then gives the new last widget its default, so set it from the old value instead.
import { app } from "../../../scripts/app.js"; // served at /extensions/<pack>/js/

const LEGACY_RECOMMENDED = -1;
const LOADERS = ["HyperSDLoraLoader", "HyperSDLoraLoaderModelOnly"];

app.registerExtension({
  name: "hypersd.LoraLoaderStrengthMode",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!LOADERS.includes(nodeData.name)) return;
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      const saved = info?.widgets_values;
      const mode = this.widgets?.find((w) => w.name === "strength_mode");
      const strength = this.widgets?.find((w) => w.name === "strength_model");
      if (mode && strength && Array.isArray(saved) && saved.length === this.widgets.length - 1) {
        const legacy = strength.value === LEGACY_RECOMMENDED;
        mode.value = legacy ? "recommended" : "custom";
        if (legacy) strength.value = 1.0;
      }
      return result;
    };
  },
});
