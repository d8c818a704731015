// Cross-check of signer-gateway's key and signature encodings against Taquito's.
//
// usage: node verify.mjs <hex bytes> <public key> <signature> <expected pkh>
//
// Prints one JSON line {"ok":…,"pkh":…}; exits 0 when Taquito's verifySignature accepts the
// signature over the bytes and derives the expected key hash, 1 otherwise.
import { verifySignature, getPkhfromPk } from '@taquito/utils';

const [hex, pk, sig, pkh] = process.argv.slice(2);
if (!hex || !pk || !sig || !pkh) {
  console.error('usage: node verify.mjs <hex bytes> <public key> <signature> <expected pkh>');
  process.exit(2);
}
try {
  const derived = getPkhfromPk(pk);
  const ok = verifySignature(hex, pk, sig) && derived === pkh;
  console.log(JSON.stringify({ ok, pkh: derived }));
  process.exit(ok ? 0 : 1);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message ? e.message : e) }));
  process.exit(1);
}
