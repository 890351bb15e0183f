//! The simulated model: which token a request gets at each position.
//!
//! Token `i` of a request is a pure function of the prompt and `i`, so a
//! client can check every byte of a response without trusting the engine:
//!
//! ```text
//! seed  = fnv1a64(utf8(prompt))
//! x     = seed XOR (i * 0x9E3779B97F4A7C15 mod 2^64)
//! z     = splitmix64_mix(x)
//! token = " " + WORDS[z mod 64]
//! ```
//!
//! where `splitmix64_mix(x)` is `x ^= x >> 30; x *= 0xBF58476D1CE4E5B9;
//! x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31` (wrapping). For a
//! chat request the prompt is [`chat_prompt`] of its messages.

/// The vocabulary of the simulated model. Every token is one of these words
/// with a leading space. Changing this list changes every expected output:
/// the golden test below pins it.
pub const WORDS: [&str; 64] = [
    "amber", "anchor", "arrow", "aspen", "basalt", "beacon", "birch", "bramble", "breeze",
    "canyon", "cedar", "cinder", "cobalt", "comet", "coral", "crane", "delta", "drift", "dune",
    "ember", "fable", "fern", "fjord", "flint", "garnet", "glacier", "granite", "harbor", "hazel",
    "heron", "indigo", "island", "jasper", "juniper", "kelp", "lagoon", "lantern", "lichen",
    "marble", "meadow", "mesa", "nectar", "nimbus", "oasis", "onyx", "orchid", "pebble", "prairie",
    "quartz", "quill", "raven", "reef", "ripple", "saffron", "sierra", "spruce", "summit",
    "thistle", "tundra", "umber", "valley", "willow", "yarrow", "zephyr",
];

/// The size of the vocabulary: token ids are below it.
pub const TOKEN_COUNT: usize = WORDS.len();

/// Token texts, each word with its leading space, indexed like [`WORDS`].
const TOKENS: [&str; TOKEN_COUNT] = {
    // Built by hand rather than at run time so that `token_text` returns a
    // `&'static str` without allocating per token.
    [
        " amber", " anchor", " arrow", " aspen", " basalt", " beacon", " birch", " bramble",
        " breeze", " canyon", " cedar", " cinder", " cobalt", " comet", " coral", " crane",
        " delta", " drift", " dune", " ember", " fable", " fern", " fjord", " flint", " garnet",
        " glacier", " granite", " harbor", " hazel", " heron", " indigo", " island", " jasper",
        " juniper", " kelp", " lagoon", " lantern", " lichen", " marble", " meadow", " mesa",
        " nectar", " nimbus", " oasis", " onyx", " orchid", " pebble", " prairie", " quartz",
        " quill", " raven", " reef", " ripple", " saffron", " sierra", " spruce", " summit",
        " thistle", " tundra", " umber", " valley", " willow", " yarrow", " zephyr",
    ]
};

/// The per-request seed: FNV-1a (64 bit) of the prompt's UTF-8 bytes.
pub fn prompt_seed(prompt: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    prompt.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The vocabulary index of token `i` of the request with `seed`: the work a
/// worker process does for each token.
pub fn token_id(seed: u64, i: u32) -> usize {
    let mut z = seed ^ u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The modulus is 64: the cast cannot truncate a meaningful bit.
    (z % TOKENS.len() as u64) as usize
}

/// The text of the token with vocabulary index `id` (a leading space and a
/// word), or `None` if `id` is out of range.
pub fn token_text(id: usize) -> Option<&'static str> {
    TOKENS.get(id).copied()
}

/// The text of token `i` of a request whose prompt is `prompt`, exactly as
/// the engine streams it (`text` of a completion chunk, `delta.content` of a
/// chat chunk).
pub fn expected_token(prompt: &str, i: u32) -> String {
    let seed = prompt_seed(prompt);
    TOKENS[token_id(seed, i)].to_owned()
}

/// The whole text of a completed request of `max_tokens` tokens: what a
/// non-streaming response carries.
pub fn expected_text(prompt: &str, max_tokens: u32) -> String {
    let seed = prompt_seed(prompt);
    (0..max_tokens).map(|i| TOKENS[token_id(seed, i)]).collect()
}

/// The prompt the engine derives from chat messages, given as `(role,
/// content)` pairs in order: each message becomes `role + ": " + content +
/// "\n"`. A content given as an array of text parts is the concatenation of
/// their texts.
pub fn chat_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut prompt = String::new();
    for (role, content) in messages {
        prompt.push_str(role);
        prompt.push_str(": ");
        prompt.push_str(content);
        prompt.push('\n');
    }
    prompt
}

/// The number of prompt tokens the engine charges (usage and prefill time):
/// one per 4 bytes of prompt, rounded up, and at least 1.
pub fn prompt_tokens(prompt: &str) -> u32 {
    let tokens = prompt.len().div_ceil(4).max(1);
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_words_with_a_leading_space() {
        for (word, token) in WORDS.iter().zip(TOKENS) {
            assert_eq!(format!(" {word}"), token);
        }
        let mut unique = WORDS.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), WORDS.len(), "words repeat");
    }

    #[test]
    fn golden_values_pin_the_function() {
        // Clients (the e2e harness, Python load generators) reimplement or
        // call this function: a change here is a breaking change for them.
        assert_eq!(prompt_seed(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(prompt_seed("a"), 0xaf63_dc4c_8601_ec8c);
        let first: Vec<String> = (0..6).map(|i| expected_token("Hello", i)).collect();
        assert_eq!(first, GOLDEN_HELLO);
    }

    const GOLDEN_HELLO: [&str; 6] = [" nimbus", " crane", " coral", " umber", " cinder", " dune"];

    #[test]
    fn text_is_the_concatenation_of_tokens() {
        let text = expected_text("a prompt", 5);
        let joined: String = (0..5).map(|i| expected_token("a prompt", i)).collect();
        assert_eq!(text, joined);
    }

    #[test]
    fn tokens_spread_over_the_vocabulary() {
        let mut seen = [0u32; 64];
        for i in 0..6400 {
            seen[token_id(prompt_seed("spread"), i)] += 1;
        }
        assert!(seen.iter().all(|&n| (50..=150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn chat_prompt_joins_roles_and_contents() {
        let prompt = chat_prompt([("system", "be brief"), ("user", "hi")]);
        assert_eq!(prompt, "system: be brief\nuser: hi\n");
    }

    #[test]
    fn prompt_tokens_rounds_up() {
        assert_eq!(prompt_tokens(""), 1);
        assert_eq!(prompt_tokens("abcd"), 1);
        assert_eq!(prompt_tokens("abcde"), 2);
    }
}
