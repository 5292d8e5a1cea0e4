"""The model card's loading code of the transformers-based plugins names each one's Auto class:
a causal LM, a sequence classifier (reward model) or an image-text-to-text model with its
processor (VLM); an adapter loads through peft over the named base."""

import pytest

from mmalign_text.reward import TextReward
from mmalign_text.reward_model import RewardModel
from mmalign_vlm.reward import VLMReward


@pytest.mark.parametrize("plugin, model_line, processor_line", [
    (TextReward, 'model = AutoModelForCausalLM.from_pretrained("org/m")',
     'tokenizer = AutoTokenizer.from_pretrained("org/m")'),
    (RewardModel, 'model = AutoModelForSequenceClassification.from_pretrained("org/m")',
     'tokenizer = AutoTokenizer.from_pretrained("org/m")'),
    (VLMReward, 'model = AutoModelForImageTextToText.from_pretrained("org/m")',
     'processor = AutoProcessor.from_pretrained("org/m")'),
])
def test_a_full_model_loads_with_the_plugins_auto_class(tmp_path, plugin, model_line, processor_line):
    library, code = plugin.how_to_load(tmp_path, "org/m", "org/base")
    assert library == "transformers" and code.splitlines()[2:] == [model_line, processor_line]


def test_an_adapter_loads_with_peft_over_the_named_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    library, code = VLMReward.how_to_load(tmp_path, "org/lora", "llava-hf/llava-1.5-7b-hf")
    assert library == "peft"
    assert code.splitlines()[3:] == [
        'base = AutoModelForImageTextToText.from_pretrained("llava-hf/llava-1.5-7b-hf")',
        'model = PeftModel.from_pretrained(base, "org/lora")',
        'processor = AutoProcessor.from_pretrained("org/lora")']
    compile(code, "card", "exec")
