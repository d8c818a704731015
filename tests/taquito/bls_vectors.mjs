// Deterministic tz4 (BLS12-381) test vectors made by Taquito.
//
// usage: node bls_vectors.mjs > ../vectors/bls_taquito.json
//
// Builds BLsk secret keys from fixed 32-byte little-endian scalars, signs a few Tezos payloads
// (magic byte included, no watermark argument) with @taquito/signer's InMemorySigner and checks
// every signature with @taquito/utils verifySignature. Taquito signs tz4 with the
// proof-of-possession ciphersuite (DST BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_) over the
// bytes themselves: no blake2b, unlike tz1/tz2/tz3. BLS signatures are deterministic, so the
// output does not change between runs.
//
// A few "valid": false vectors (signature over other bytes, wrong key, wrong DST) are included
// as well; each must be rejected by verifySignature. Prints the JSON on stdout; exits 1 if any
// check fails.
import { InMemorySigner, VERSION as SIGNER_VERSION } from '@taquito/signer';
import {
  verifySignature,
  getPkhfromPk,
  b58Encode,
  b58DecodeAndCheckPrefix,
  PrefixV2,
  VERSION as UTILS_VERSION,
} from '@taquito/utils';

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (h) => Uint8Array.from(Buffer.from(h, 'hex'));

// Fixed secret scalars, 32 bytes little-endian as in a Tezos BLsk (all < r).
const scalarsLe = [
  ['key1', '01' + '00'.repeat(31)], // scalar 1
  ['key2', '02' + '00'.repeat(31)], // scalar 2
  // bytes 01 02 … 20 read little-endian: 0x201f…0201 < r = 0x73eda753…
  ['key3', Array.from({ length: 32 }, (_, i) => (i + 1).toString(16).padStart(2, '0')).join('')],
];

const chainId = '7a06a770';
const branch = 'aa'.repeat(32);
const payloadHash = 'bb'.repeat(32);
const be32 = (n) => n.toString(16).padStart(8, '0');
// tz4 consensus operations (tags 40/41 carry no slot): magic, chain id, branch, tag, level, round,
// block payload hash.
const consensus = (magic, tag, level, round) =>
  magic + chainId + branch + tag + be32(level) + be32(round) + payloadHash;
const messages = [
  ['attestation level 100 round 0', consensus('13', '29', 100, 0)],
  ['preattestation level 100 round 0', consensus('12', '28', 100, 0)],
  ['attestation level 101 round 1', consensus('13', '29', 101, 1)],
  ['micheline "abc"', '05' + '0100000003616263'],
];

let failures = 0;
function check(cond, what) {
  if (!cond) {
    failures += 1;
    console.error(`FAIL: ${what}`);
  }
}

const keys = [];
const vectors = [];
for (const [keyName, skLe] of scalarsLe) {
  const secretKey = b58Encode(unhex(skLe), PrefixV2.BLS12_381SecretKey);
  const signer = new InMemorySigner(secretKey);
  const publicKey = await signer.publicKey();
  const pkh = await signer.publicKeyHash();
  check(await signer.secretKey() === secretKey, `${keyName}: secret key round trip`);
  check(getPkhfromPk(publicKey) === pkh, `${keyName}: getPkhfromPk`);
  check(pkh.startsWith('tz4') && publicKey.startsWith('BLpk'), `${keyName}: tz4/BLpk`);
  const pop = await signer.provePossession();
  check(
    verifySignature(b58DecodeAndCheckPrefix(publicKey, [PrefixV2.BLS12_381PublicKey], true), publicKey, pop.prefixSig, undefined, true),
    `${keyName}: proof of possession verifies`,
  );
  keys.push({
    name: keyName,
    secret_scalar_le_hex: skLe,
    secret_key: secretKey,
    public_key: publicKey,
    public_key_hex: hex(b58DecodeAndCheckPrefix(publicKey, [PrefixV2.BLS12_381PublicKey], true)),
    pkh,
    proof_of_possession: pop.prefixSig,
  });
  for (const [msgName, msgHex] of messages) {
    const signed = await signer.sign(msgHex); // no watermark: the signed bytes are msgHex
    check(signed.bytes === msgHex, `${keyName}/${msgName}: bytes echoed`);
    const raw = b58DecodeAndCheckPrefix(signed.prefixSig, [PrefixV2.BLS12_381Signature], true);
    check(raw.length === 96, `${keyName}/${msgName}: 96-byte signature`);
    check(signed.sbytes === msgHex + 'ff03' + hex(raw), `${keyName}/${msgName}: sbytes`);
    const ok = verifySignature(msgHex, publicKey, signed.prefixSig);
    check(ok === true, `${keyName}/${msgName}: verifySignature`);
    vectors.push({
      name: `${keyName} ${msgName}`,
      secret_key: secretKey,
      public_key: publicKey,
      pkh,
      msg_hex: msgHex,
      signature: signed.prefixSig,
      signature_hex: hex(raw),
      generic_signature: signed.sig,
      valid: ok,
    });
  }
}

// Negative vectors: each must be rejected.
const first = vectors[0];
const other = vectors.find((v) => v.pkh !== first.pkh && v.msg_hex === first.msg_hex);
const tampered = consensus('13', '29', 100, 1); // same attestation, other round
const negatives = [
  ['signature over other bytes (round 1 instead of 0)', first.public_key, first.pkh, tampered, first.signature],
  ['signature by another key', first.public_key, first.pkh, first.msg_hex, other.signature],
  // The proof of possession signs the public key bytes under the other DST (BLS_POP_…): as an
  // ordinary signature over those same bytes it must fail.
  ['proof of possession (DST BLS_POP_…) used as a signature over the public key bytes', first.public_key, first.pkh, keys[0].public_key_hex, keys[0].proof_of_possession],
];
for (const [name, publicKey, pkh, msgHex, signature] of negatives) {
  const ok = verifySignature(msgHex, publicKey, signature);
  check(ok === false, `negative "${name}" must not verify`);
  vectors.push({
    name: `invalid: ${name}`,
    secret_key: keys[0].secret_key,
    public_key: publicKey,
    pkh,
    msg_hex: msgHex,
    signature,
    valid: ok,
  });
}

if (failures > 0) {
  console.error(`${failures} check(s) failed`);
  process.exit(1);
}

const out = {
  about:
    `tz4 (BLS12-381, MinPk) vectors made by @taquito/signer ${SIGNER_VERSION.version} InMemorySigner ` +
    `and checked by @taquito/utils ${UTILS_VERSION.version} verifySignature: proof-of-possession scheme ` +
    '(DST BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_) over msg_hex itself (magic byte included, ' +
    'no watermark argument, no blake2b). secret_key is a BLsk of the 32-byte little-endian scalar in ' +
    'keys[].secret_scalar_le_hex. proof_of_possession: Taquito provePossession (DST ' +
    'BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_ over the 48-byte public key). generic_signature is ' +
    'what Taquito returns as "sig": the 96 bytes under the 64-byte generic prefix 04822b, which ' +
    'Taquito itself cannot decode; Octez has no generic form for BLS signatures. valid: false entries ' +
    'must be rejected.',
  generated_by: 'tests/taquito/bls_vectors.mjs',
  keys,
  vectors,
};
console.log(JSON.stringify(out, null, 1));
