package session

// The engine's fixed replies. Defaults follow the seed and DESIGN.md.
var (
	replyMailOK             = NewReply(250, "2.1.0", "Sender OK")
	replyRcptOK             = NewReply(250, "2.1.5", "Recipient OK")
	replyOK                 = NewReply(250, "2.0.0", "OK")
	replyData               = NewReply(354, "", "End data with <CR><LF>.<CR><LF>")
	replyVrfy               = NewReply(252, "2.5.0", "Cannot VRFY user; try RCPT to attempt delivery")
	replyExpn               = NewReply(502, "5.5.1", "Sorry we don't allow this operation")
	replyHelp               = NewReply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP VRFY EXPN HELP QUIT", "See RFC 5321")
	replyUnknown            = NewReply(500, "5.5.2", "Command unrecognized")
	replyNotImpl            = NewReply(502, "5.5.1", "Command not implemented")
	replyLineTooLong        = NewReply(500, "5.5.2", "Line too long")
	replyLineEndless        = &Reply{Code: 500, Enhanced: "5.5.2", Lines: []string{"Line too long; closing connection"}, Close: true}
	replyBadLineEnding      = NewReply(501, "5.5.2", "Syntax error: command line must end with CRLF")
	replyBadChars           = NewReply(501, "5.5.2", "Syntax error: CR, LF or NUL in command")
	replyTooManyErrors      = &Reply{Code: 421, Enhanced: "4.7.0", Lines: []string{"Too many errors; closing connection"}, Close: true}
	replyTimeout            = &Reply{Code: 421, Enhanced: "4.4.2", Lines: []string{"Timeout; closing connection"}, Close: true}
	replyDataTooSlow        = &Reply{Code: 421, Enhanced: "4.4.2", Lines: []string{"Message data arrives too slowly; closing connection"}, Close: true}
	replyTooManyConnections = &Reply{Code: 421, Enhanced: "4.7.0", Lines: []string{"Too many connections; try again later"}, Close: true}
	replyTooManyFromIP      = &Reply{Code: 421, Enhanced: "4.7.0", Lines: []string{"Too many connections from your address; try again later"}, Close: true}
	replyEarlyTalker        = &Reply{Code: 554, Enhanced: "5.5.0", Lines: []string{"Protocol error: client talked before the greeting; closing connection"}, Close: true}
	replyShuttingDown       = &Reply{Code: 421, Enhanced: "4.3.2", Lines: []string{"Service shutting down; closing connection"}, Close: true}
	replyHandlerFailed      = NewReply(451, "4.3.0", "Temporary local problem; try again later")

	replyNeedHelo       = NewReply(503, "5.5.1", "Send HELO/EHLO first")
	replyNeedEhlo       = NewReply(503, "5.5.1", "Send EHLO first")
	replyNestedMail     = NewReply(503, "5.5.1", "Nested MAIL command")
	replyNeedMail       = NewReply(503, "5.5.1", "Need MAIL command")
	replyNeedRcpt       = NewReply(503, "5.5.1", "Need RCPT command")
	replyNoValidRcpts   = NewReply(554, "5.5.1", "No valid recipients")
	replyDataAfterBdat  = NewReply(503, "5.5.1", "DATA not allowed after BDAT")
	replyHeloSyntax     = NewReply(501, "5.5.4", "Syntax: HELO <domain>")
	replyEhloSyntax     = NewReply(501, "5.5.4", "Syntax: EHLO <domain>")
	replyMailSyntax     = NewReply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
	replyRcptSyntax     = NewReply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
	replyBdatSyntax     = &Reply{Code: 501, Enhanced: "5.5.4", Lines: []string{"Syntax: BDAT <size> [LAST]; closing connection"}, Close: true}
	replyNoArgs         = NewReply(501, "5.5.4", "Syntax error: no parameters allowed")
	replyNeedArg        = NewReply(501, "5.5.4", "Syntax error: parameter required")
	replyBadSender      = NewReply(501, "5.1.7", "Bad sender address syntax")
	replyBadRcpt        = NewReply(501, "5.1.3", "Bad recipient address syntax")
	replyNeedUTF8       = NewReply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
	replyParamsNeedEhlo = NewReply(555, "5.5.4", "Parameters require EHLO")
	replyBadParam       = NewReply(555, "5.5.4", "Unsupported parameter")
	replyParamSyntax    = NewReply(501, "5.5.4", "Syntax error in parameters")
	replyBadBody        = NewReply(555, "5.5.4", "Unsupported BODY type")
	replyBadSize        = NewReply(501, "5.5.4", "Syntax error in SIZE parameter")
	replyTooBig         = NewReply(552, "5.3.4", "Message size exceeds fixed maximum message size")
	replyTooManyRcpts   = NewReply(452, "4.5.3", "Too many recipients")
	replyEarlyData      = &Reply{Code: 554, Enhanced: "5.5.0", Lines: []string{"Pipelining violation: message data sent before 354; closing connection"}, Close: true}
	replyBareCRLF       = NewReply(550, "5.5.2", "Message refused: bare CR or LF in data (lines must end with CRLF)")
	replyNUL            = NewReply(550, "5.5.2", "Message refused: NUL byte in data")
	replyLongLine       = NewReply(550, "5.5.2", "Message refused: line too long")
)
