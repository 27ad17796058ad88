//! Streamed text, piece by piece, adds up to the decoding of all the tokens at once, also where
//! one character spans several tokens.

use baton_client::generate::TextStream;
use baton_node::ModelFile;

#[test]
fn pieces_add_up_to_the_whole_decoding() {
    let model = ModelFile::open(&baton_tests::demo_model()).unwrap();
    let tok = model.tokenizer().unwrap();
    let text = "Déjà vu: 東京 🙂 naïve — ça marche, 12345 fois.\nNew line and  two spaces.";
    let ids = tok.encode(text).unwrap();
    let mut stream = TextStream::new(&tok);
    let mut pieces = String::new();
    for id in &ids {
        let piece = stream.push(*id);
        assert!(
            !piece.contains('\u{fffd}'),
            "a piece split a character: {piece:?}"
        );
        pieces.push_str(&piece);
    }
    assert_eq!(pieces, tok.decode(&ids).unwrap());
    assert_eq!(pieces, text);
}
