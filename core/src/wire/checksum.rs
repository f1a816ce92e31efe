//! The Internet checksum (RFC 1071): ones'-complement sums of big-endian 16-bit words.

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `initial`.
///
/// The result is an unfolded ones'-complement sum; finish it with [`fold`]. Sums can be
/// chained (`sum(payload, sum(pseudo_header, 0))`) as long as every piece but the last has an
/// even length.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(initial);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Adding the two 32-bit halves keeps the sum congruent mod 0xffff (2^32 = 1 there);
        // each step adds under 2^33, so u64 cannot overflow for any real buffer.
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

/// Folds a sum to 16 bits and complements it: the value to store in a checksum field.
pub fn fold(sum: u32) -> u16 {
    let mut s = sum;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The checksum of `data`; 0 when `data` already contains a correct checksum field.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum(data, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward definition, to check the fast one against.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for p in data.chunks(2) {
            let w = if p.len() == 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                u16::from(p[0]) << 8
            };
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn captured_header_verifies() {
        // The IPv4 header of a Linux echo reply (10.77.0.2 -> 10.77.0.1), checksum 0x6b6c.
        let header = [
            0x45, 0x00, 0x00, 0x34, 0xfa, 0xc0, 0x00, 0x00, 0x40, 0x01, 0x6b, 0x6c, 0x0a, 0x4d,
            0x00, 0x02, 0x0a, 0x4d, 0x00, 0x01,
        ];
        assert_eq!(checksum(&header), 0);
        let mut zeroed = header;
        zeroed[10..12].fill(0);
        assert_eq!(checksum(&zeroed), 0x6b6c);
    }

    #[test]
    fn chained_sums_equal_one_sum() {
        let data: Vec<u8> = (0..101u8).map(|i| i.wrapping_mul(37)).collect();
        for split in (0..data.len()).step_by(2) {
            let chained = fold(sum(&data[split..], sum(&data[..split], 0)));
            assert_eq!(chained, checksum(&data), "split {split}");
        }
        // A large initial value (e.g. a pre-summed pseudo-header) folds correctly.
        assert_eq!(fold(sum(&[], 0xffff_ffff)), reference(&[0xff; 4]));
    }

    #[test]
    fn fast_sum_matches_the_definition_for_every_length() {
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            assert_eq!(checksum(&data[..len]), reference(&data[..len]), "len {len}");
        }
        assert_eq!(checksum(&[0xff; 4096]), reference(&[0xff; 4096]));
    }
}
