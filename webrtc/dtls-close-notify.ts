import type { RTCDtlsTransport } from 'werift';

/**
 * Sends a DTLS close_notify alert (RFC 6347 / RFC 5246 §7.2.1) on a connected transport.
 *
 * werift 0.24.4's close() only closes its socket ("todo impl send alert"), so a browser learns of
 * the hangup only when ICE consent expires (~30 s). Chrome ends the PeerConnection at once on
 * close_notify. This reaches into werift's DtlsSocket (cipher, context, transport) as of the
 * pinned 0.24.4; if those internals move, it does nothing and returns false.
 */
export async function sendDtlsCloseNotify(transport: RTCDtlsTransport): Promise<boolean> {
  type Header = { contentType: number; protocolVersion: { major: number; minor: number }; epoch: number; sequenceNumber: number; contentLen: number };
  const socket = (transport as unknown as { dtls?: Record<string, unknown> }).dtls as
    | {
        dtls?: { version: { major: number; minor: number }; epoch: number; recordSequenceNumber: number };
        cipher?: { encryptPacket(pkt: { recordLayerHeader: Header; fragment: Buffer }): { recordLayerHeader: Header; fragment: Buffer } };
        transport?: { send(buf: Buffer): Promise<void> | void };
      }
    | undefined;
  const ctx = socket?.dtls;
  if (transport.state !== 'connected' || !ctx || !socket.cipher || !socket.transport || typeof socket.cipher.encryptPacket !== 'function') return false;
  const fragment = Buffer.from([1 /* warning */, 0 /* close_notify */]);
  const header: Header = { contentType: 21 /* alert */, protocolVersion: ctx.version, epoch: ctx.epoch, sequenceNumber: ++ctx.recordSequenceNumber, contentLen: fragment.length };
  const enc = socket.cipher.encryptPacket({ recordLayerHeader: header, fragment });
  const record = Buffer.alloc(13 + enc.fragment.length);
  record.writeUInt8(21, 0);
  record.writeUInt8(header.protocolVersion.major, 1);
  record.writeUInt8(header.protocolVersion.minor, 2);
  record.writeUInt16BE(header.epoch, 3);
  record.writeUIntBE(header.sequenceNumber, 5, 6);
  record.writeUInt16BE(enc.fragment.length, 11);
  enc.fragment.copy(record, 13);
  // Awaited so the record leaves before the socket closes (werift's ICE send path is async).
  await socket.transport.send(record);
  return true;
}
