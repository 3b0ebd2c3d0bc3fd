"""The facts behind kisstore/data/facts.json, by relation: templates and (target → subjects) tables.

Written for kisstore (docs/facts.md). Every fact is a well-known, stable one; every subject
appears once in the whole file. A table line is ``Target|Qid: subject; subject; ...`` (the Qid
is the target's Wikidata item where we were sure of it, otherwise left out).

Templates end where the target starts (``prompt + " " + target``). ``prompts`` are rotated over
the records of a relation as their ``requested_rewrite.prompt``; ``paraphrases`` are the relation's
other wordings (two per record, with the record's subject); neighbourhood and attribute prompts
draw from both. Of several natural wordings per relation, the ones SmolLM2-135M completes best
went into ``prompts`` (docs/facts.md gives the measurement). ``generation`` are open prompts in
CounterFact's style.
"""

RELATIONS = {
    # -- people -----------------------------------------------------------------------------
    "P103": dict(
        meaning="native language", kind="person",
        prompts=['The native language of {} is', 'The mother tongue of {} is'],
        paraphrases=['{} is a native speaker of', '{} spoke the language'],
        generation=["{} grew up speaking", "Where {} was born, people speak", "{}'s first language is"],
        table="""
French|Q150: Victor Hugo; Voltaire; Charles de Gaulle; Claude Monet; Edith Piaf; Jean-Paul Sartre; Albert Camus; Emile Zola; Gustave Flaubert; Honore de Balzac; Marcel Proust; Jules Verne; Alexandre Dumas; Moliere; Jean Racine; Rene Descartes; Blaise Pascal; Louis Pasteur; Auguste Rodin; Edgar Degas; Pierre-Auguste Renoir; Paul Cezanne; Claude Debussy; Maurice Ravel; Georges Bizet; Emmanuel Macron; Francois Mitterrand; Jacques Chirac; Gerard Depardieu; Catherine Deneuve; Brigitte Bardot; Juliette Binoche; Simone de Beauvoir; Antoine de Saint-Exupery; Charles Baudelaire; Arthur Rimbaud; Paul Verlaine; Stendhal; Guy de Maupassant
Spanish|Q1321: Pablo Picasso; Miguel de Cervantes; Federico Garcia Lorca; Pedro Almodovar; Antonio Banderas; Penelope Cruz; Javier Bardem; Julio Iglesias; Enrique Iglesias; Gabriel Garcia Marquez; Jorge Luis Borges; Pablo Neruda; Octavio Paz; Frida Kahlo; Diego Rivera; Fidel Castro; Che Guevara; Simon Bolivar; Francisco Goya; Diego Velazquez; Mario Vargas Llosa; Isabel Allende; Shakira; Placido Domingo; Francisco Franco; Hernan Cortes
Italian|Q652: Dante Alighieri; Leonardo da Vinci; Michelangelo; Galileo Galilei; Giuseppe Verdi; Giacomo Puccini; Antonio Vivaldi; Luciano Pavarotti; Sophia Loren; Federico Fellini; Marcello Mastroianni; Umberto Eco; Italo Calvino; Niccolo Machiavelli; Giovanni Boccaccio; Francesco Petrarca; Enrico Fermi; Guglielmo Marconi; Alessandro Volta; Benito Mussolini; Silvio Berlusconi; Andrea Bocelli; Roberto Benigni; Sandro Botticelli; Raphael; Caravaggio; Gioachino Rossini
German|Q188: Johann Wolfgang von Goethe; Friedrich Schiller; Ludwig van Beethoven; Johann Sebastian Bach; Richard Wagner; Johannes Brahms; Immanuel Kant; Friedrich Nietzsche; Karl Marx; Friedrich Engels; Martin Luther; Albert Einstein; Max Planck; Werner Heisenberg; Thomas Mann; Hermann Hesse; Bertolt Brecht; Angela Merkel; Otto von Bismarck; Konrad Adenauer; Helmut Kohl; Sigmund Freud; Franz Kafka; Wolfgang Amadeus Mozart; Franz Schubert; Arthur Schopenhauer; Georg Wilhelm Friedrich Hegel; Albrecht Durer; Marlene Dietrich; Michael Schumacher
Russian|Q7737: Leo Tolstoy; Fyodor Dostoevsky; Anton Chekhov; Alexander Pushkin; Ivan Turgenev; Vladimir Lenin; Vladimir Putin; Mikhail Gorbachev; Boris Yeltsin; Pyotr Ilyich Tchaikovsky; Sergei Rachmaninoff; Igor Stravinsky; Dmitri Shostakovich; Yuri Gagarin; Dmitri Mendeleev; Ivan Pavlov; Nikita Khrushchev; Boris Pasternak; Aleksandr Solzhenitsyn; Maxim Gorky; Mikhail Bulgakov; Anna Akhmatova; Maria Sharapova; Wassily Kandinsky; Sergei Eisenstein
Japanese|Q5287: Akira Kurosawa; Hayao Miyazaki; Haruki Murakami; Yukio Mishima; Yasunari Kawabata; Hideki Yukawa; Shinzo Abe; Hirohito; Toshiro Mifune; Katsushika Hokusai; Matsuo Basho; Yoko Ono; Ichiro Suzuki; Shohei Ohtani; Naomi Osaka; Ryuichi Sakamoto; Takeshi Kitano; Hideo Kojima; Shigeru Miyamoto; Kenzaburo Oe; Osamu Tezuka; Akira Toriyama; Soichiro Honda; Akio Morita; Junichiro Koizumi
Portuguese|Q5146: Fernando Pessoa; Jose Saramago; Luis de Camoes; Vasco da Gama; Ferdinand Magellan; Cristiano Ronaldo; Jose Mourinho; Eusebio; Amalia Rodrigues; Pele; Ronaldinho; Neymar; Paulo Coelho; Ayrton Senna; Oscar Niemeyer; Gisele Bundchen; Antonio Carlos Jobim; Joao Gilberto; Jorge Amado; Luiz Inacio Lula da Silva
Dutch|Q7411: Vincent van Gogh; Rembrandt; Johannes Vermeer; Piet Mondrian; Erasmus; Christiaan Huygens; Antonie van Leeuwenhoek; Johan Cruyff; Hieronymus Bosch; M. C. Escher; Paul Verhoeven; Mark Rutte
Swedish|Q9027: Alfred Nobel; Greta Garbo; Ingrid Bergman; Ingmar Bergman; Bjorn Borg; Astrid Lindgren; August Strindberg; Carl Linnaeus; Anders Celsius; Greta Thunberg; Selma Lagerlof; Dag Hammarskjold; Olof Palme; Stieg Larsson
Polish|Q809: Frederic Chopin; Marie Curie; Lech Walesa; Pope John Paul II; Wislawa Szymborska; Czeslaw Milosz; Andrzej Wajda; Robert Lewandowski; Stanislaw Lem; Krzysztof Kieslowski
Greek|Q9129: Nikos Kazantzakis; Yanni; Constantine Cavafy; Odysseas Elytis; Giorgos Seferis; Mikis Theodorakis; Vangelis; Andreas Papandreou; Melina Mercouri
Korean|Q9176: Kim Jong-un; Kim Il-sung; Park Chung-hee; Ban Ki-moon; Moon Jae-in; Bong Joon-ho; Park Chan-wook; Son Heung-min; Psy; Syngman Rhee
Czech|Q9056: Vaclav Havel; Milan Kundera; Antonin Dvorak; Leos Janacek; Karel Capek; Jaroslav Hasek; Martina Navratilova; Emil Zatopek; Alfons Mucha
Hungarian|Q9067: Bela Bartok; Ferenc Puskas; Viktor Orban; Imre Kertesz; Sandor Petofi; Erno Rubik; Bela Lugosi; Zoltan Kodaly
Finnish|Q1412: Alvar Aalto; Aki Kaurismaki; Kimi Raikkonen; Mika Hakkinen; Paavo Nurmi; Urho Kekkonen; Sauli Niinisto
""",
    ),
    "P27": dict(
        meaning="country of citizenship", kind="person",
        prompts=['{} is from the country of', '{} is a citizen of the country of'],
        paraphrases=['{} is a citizen of', '{} holds a citizenship from', '{}, who is a citizen of'],
        generation=["{} currently lives in", "{} was born and raised in", "The passport of {} was issued by"],
        table="""
United States|Q30: Barack Obama; Abraham Lincoln; George Washington; Thomas Jefferson; Franklin D. Roosevelt; John F. Kennedy; Martin Luther King Jr.; Elvis Presley; Marilyn Monroe; Michael Jackson; Madonna; Bob Dylan; Oprah Winfrey; Tom Hanks; Meryl Streep; Steve Jobs; Bill Gates; Mark Zuckerberg; Warren Buffett; Henry Ford; Thomas Edison; Neil Armstrong; Muhammad Ali; Michael Jordan; Serena Williams; Babe Ruth; Walt Disney; Ernest Hemingway; Mark Twain; Benjamin Franklin; Hillary Clinton; Joe Biden; Ronald Reagan; Richard Nixon; Frank Sinatra; Taylor Swift; Beyonce; Steven Spielberg; Tiger Woods; LeBron James
United Kingdom|Q145: Winston Churchill; Margaret Thatcher; Tony Blair; Boris Johnson; David Beckham; Elton John; Paul McCartney; Mick Jagger; David Bowie; Freddie Mercury; Adele; Ed Sheeran; Daniel Radcliffe; Emma Watson; Benedict Cumberbatch; Judi Dench; Helen Mirren; Anthony Hopkins; Stephen Hawking; Charles Darwin; Alan Turing; J. K. Rowling; Agatha Christie; Charles Dickens; Virginia Woolf; Andy Murray; Lewis Hamilton; Queen Elizabeth II; Prince William
Germany|Q183: Olaf Scholz; Gerhard Schroder; Boris Becker; Steffi Graf; Dirk Nowitzki; Franz Beckenbauer; Thomas Muller; Manuel Neuer; Sebastian Vettel; Heidi Klum; Claudia Schiffer; Til Schweiger; Jurgen Klopp; Karl Lagerfeld; Werner Herzog
France|Q142: Zinedine Zidane; Kylian Mbappe; Thierry Henry; Michel Platini; Nicolas Sarkozy; Francois Hollande; Marion Cotillard; Audrey Tautou; Jean Reno; Omar Sy; Christine Lagarde; Marine Le Pen; Francois Truffaut
Japan|Q17: Fumio Kishida; Yoshihide Suga; Kei Nishikori; Yuzuru Hanyu; Hideki Matsuyama; Ken Watanabe; Hiroyuki Sanada; Takuya Kimura; Naoki Urasawa; Kazuo Hirai
India|Q668: Mahatma Gandhi; Jawaharlal Nehru; Indira Gandhi; Narendra Modi; Sachin Tendulkar; Virat Kohli; Shah Rukh Khan; Amitabh Bachchan; Aishwarya Rai; A. P. J. Abdul Kalam; Manmohan Singh; Rahul Gandhi; Priyanka Chopra; Satyajit Ray
Canada|Q16: Justin Trudeau; Pierre Trudeau; Wayne Gretzky; Celine Dion; Justin Bieber; Drake; Ryan Gosling; Ryan Reynolds; Jim Carrey; Leonard Cohen; Margaret Atwood; Alice Munro; Neil Young; Joni Mitchell; Shania Twain
Australia|Q408: Hugh Jackman; Nicole Kidman; Cate Blanchett; Russell Crowe; Kylie Minogue; Steve Irwin; Rod Laver; Julia Gillard; Kevin Rudd; Margot Robbie; Chris Hemsworth; Heath Ledger
China|Q148: Mao Zedong; Xi Jinping; Deng Xiaoping; Zhou Enlai; Yao Ming; Li Na; Jack Ma; Jackie Chan; Zhang Yimou; Lang Lang; Hu Jintao; Jiang Zemin
Russia|Q159: Dmitry Medvedev; Sergei Lavrov; Alexei Navalny; Valentina Tereshkova; Alexander Ovechkin; Daniil Medvedev; Yevgeny Kafelnikov
Italy|Q38: Giorgia Meloni; Mario Draghi; Francesco Totti; Paolo Maldini; Roberto Baggio; Valentino Rossi; Monica Bellucci; Giorgio Armani; Gianni Versace; Laura Pausini
Brazil|Q155: Jair Bolsonaro; Dilma Rousseff; Kaka; Ronaldo Nazario; Romario; Zico; Rivaldo; Marta Vieira da Silva
Mexico|Q96: Andres Manuel Lopez Obrador; Guillermo del Toro; Alfonso Cuaron; Alejandro Gonzalez Inarritu; Salma Hayek; Gael Garcia Bernal; Carlos Slim; Vicente Fox
""",
    ),
    "P106": dict(
        meaning="occupation", kind="person",
        prompts=['{} works as a', '{} is a famous'],
        paraphrases=["{}'s occupation is", 'The profession of {} is'],
        generation=["{} is known for", "{} made a living as a", "{}'s greatest work"],
        table="""
actor|Q33999: Leonardo DiCaprio; Brad Pitt; Tom Cruise; Johnny Depp; Robert De Niro; Al Pacino; Denzel Washington; Morgan Freeman; Samuel L. Jackson; Keanu Reeves; Will Smith; Matt Damon; George Clooney; Harrison Ford; Clint Eastwood; Jack Nicholson; Marlon Brando; Dustin Hoffman; Robin Williams; Tom Hardy; Christian Bale; Joaquin Phoenix; Jake Gyllenhaal; Mark Wahlberg; Nicolas Cage
politician|Q82955: Nancy Pelosi; Bernie Sanders; Mitch McConnell; Kamala Harris; Theresa May; Gordon Brown; David Cameron; Keir Starmer; Jeremy Corbyn; Elizabeth Warren; Ted Cruz; Marco Rubio; Mike Pence; Al Gore; John McCain; Mitt Romney; Dick Cheney; Condoleezza Rice
physicist|Q169470: Niels Bohr; Erwin Schrodinger; Paul Dirac; Richard Feynman; James Clerk Maxwell; Michael Faraday; Max Born; Wolfgang Pauli; Ernest Rutherford; J. Robert Oppenheimer; Peter Higgs; Lise Meitner; Heinrich Hertz; Andre-Marie Ampere
painter|Q1028181: Henri Matisse; Paul Gauguin; Edouard Manet; Gustav Klimt; Edvard Munch; Jackson Pollock; Andy Warhol; Mark Rothko; Georgia O'Keeffe; Titian; Peter Paul Rubens; Jan van Eyck; J. M. W. Turner; John Constable; Camille Pissarro
composer|Q36834: George Frideric Handel; Joseph Haydn; Felix Mendelssohn; Robert Schumann; Gustav Mahler; Richard Strauss; Sergei Prokofiev; Camille Saint-Saens; Hector Berlioz; Edvard Grieg; Giuseppe Tartini; Jean-Baptiste Lully; Henry Purcell; Claudio Monteverdi; John Williams; Hans Zimmer; Ennio Morricone
poet|Q49757: Homer; Virgil; Ovid; John Keats; Percy Bysshe Shelley; Lord Byron; William Wordsworth; Samuel Taylor Coleridge; Emily Dickinson; Walt Whitman; Robert Frost; Sylvia Plath; T. S. Eliot; W. B. Yeats; Rumi; Sappho
philosopher|Q4964182: Socrates; Plato; Aristotle; Confucius; Thomas Aquinas; John Locke; David Hume; Thomas Hobbes; Jean-Jacques Rousseau; Soren Kierkegaard; Ludwig Wittgenstein; Bertrand Russell; Martin Heidegger; Michel Foucault; Seneca
mathematician|Q170790: Leonhard Euler; Carl Friedrich Gauss; Pierre de Fermat; Euclid; Pythagoras; Archimedes; Bernhard Riemann; David Hilbert; Henri Poincare; Srinivasa Ramanujan; Emmy Noether; Kurt Godel; Evariste Galois; Augustin-Louis Cauchy; Joseph-Louis Lagrange
singer|Q177220: Whitney Houston; Mariah Carey; Barbra Streisand; Aretha Franklin; Ella Fitzgerald; Billie Holiday; Frank Ocean; Rihanna; Lady Gaga; Katy Perry; Britney Spears; Christina Aguilera; Bruno Mars; Ariana Grande; Dolly Parton; Tina Turner
""",
    ),
    "P641": dict(
        meaning="sport", kind="person",
        prompts=['{} is a professional', '{} professionally plays the sport of'],
        paraphrases=["{}'s sport is", '{} became famous playing'],
        generation=["{} trained every day to", "The best moment of {}'s career was", "{} is best known for"],
        table="""
basketball|Q5372: Kobe Bryant; Shaquille O'Neal; Magic Johnson; Larry Bird; Stephen Curry; Kevin Durant; Kareem Abdul-Jabbar; Wilt Chamberlain; Tim Duncan; Dwyane Wade; Giannis Antetokounmpo; Charles Barkley; Scottie Pippen; Hakeem Olajuwon
tennis|Q847: Roger Federer; Novak Djokovic; Pete Sampras; Andre Agassi; John McEnroe; Venus Williams; Martina Hingis; Monica Seles; Billie Jean King; Jimmy Connors; Ivan Lendl; Stan Wawrinka; Chris Evert; Arthur Ashe
soccer|Q2736: Lionel Messi; Diego Maradona; Wayne Rooney; Steven Gerrard; Frank Lampard; Andrea Pirlo; Xavi Hernandez; Andres Iniesta; Luka Modric; Karim Benzema; Mohamed Salah; Erling Haaland; Gianluigi Buffon; Didier Drogba; George Best
baseball|Q5369: Derek Jeter; Alex Rodriguez; Barry Bonds; Hank Aaron; Willie Mays; Mickey Mantle; Joe DiMaggio; Ted Williams; Lou Gehrig; Jackie Robinson; Mike Trout; Ken Griffey Jr.; Sandy Koufax; Cal Ripken Jr.
ice hockey|Q41466: Sidney Crosby; Mario Lemieux; Bobby Orr; Gordie Howe; Jaromir Jagr; Mark Messier; Connor McDavid; Patrick Roy; Martin Brodeur; Maurice Richard; Steve Yzerman
American football|Q41323: Tom Brady; Peyton Manning; Joe Montana; Jerry Rice; Dan Marino; Brett Favre; Walter Payton; Aaron Rodgers; Patrick Mahomes; John Elway; Emmitt Smith; Lawrence Taylor
golf|Q5377: Jack Nicklaus; Arnold Palmer; Phil Mickelson; Rory McIlroy; Gary Player; Seve Ballesteros; Annika Sorenstam; Ben Hogan
cricket|Q5375: Don Bradman; Brian Lara; Shane Warne; Ricky Ponting; Imran Khan; Jacques Kallis; Muttiah Muralitharan; Viv Richards
boxing|Q32112: Mike Tyson; Floyd Mayweather Jr.; Manny Pacquiao; Sugar Ray Leonard; Joe Frazier; George Foreman; Rocky Marciano; Evander Holyfield
""",
    ),
    # -- places -----------------------------------------------------------------------------
    "P37": dict(
        meaning="official language", kind="country",
        prompts=['In {}, the official language is', 'The official language of {} is'],
        paraphrases=['In {}, an official language is', 'The law in {} declares the language'],
        generation=["In {}, people speak", "{} is full of people who speak", "The language used by people in {} is"],
        table="""
French|Q150: France; Senegal; Monaco; Ivory Coast; Guinea; Gabon; Benin; Togo; Haiti; Madagascar; Democratic Republic of the Congo
Spanish|Q1321: Spain; Mexico; Argentina; Colombia; Peru; Chile; Venezuela; Cuba; Ecuador; Uruguay; Guatemala; Honduras; Costa Rica; Panama; Nicaragua; El Salvador; Dominican Republic
Portuguese|Q5146: Portugal; Brazil; Angola; Mozambique; Cape Verde; Guinea-Bissau; Sao Tome and Principe
English|Q1860: Jamaica; Nigeria; Ghana; Kenya; Uganda; Zambia; Zimbabwe; Liberia; Bahamas; Barbados; Belize; Trinidad and Tobago; Sierra Leone; Botswana; Philippines
Arabic|Q13955: Saudi Arabia; Egypt; Iraq; Syria; Jordan; Lebanon; Libya; Yemen; Oman; Kuwait; Qatar; Sudan; Tunisia; Algeria; Morocco; United Arab Emirates; Bahrain
German|Q188: Germany; Austria; Liechtenstein; Switzerland
""",
    ),
    "P30": dict(
        meaning="continent", kind="natural feature or landmark",
        prompts=['{} is located in the continent of', '{} can be found on the continent of'],
        paraphrases=['{} belongs to the continent of', '{} is in'],
        generation=["People who visit {} usually also travel to", "The climate around {} is", "To get to {}, you fly to"],
        table="""
Africa|Q15: Mount Kilimanjaro; Sahara Desert; Lake Victoria; Congo River; Kalahari Desert; Victoria Falls; Serengeti National Park; Mount Kenya; Lake Tanganyika; Atlas Mountains; Namib Desert; Table Mountain; Okavango Delta; Zambezi River
Asia|Q48: Mount Everest; Gobi Desert; Himalayas; Yangtze River; Mekong River; Lake Baikal; Ganges River; K2; Angkor Wat; Dead Sea; Yellow River; Karakoram; Tibetan Plateau; Ha Long Bay
Europe|Q46: Alps; Danube River; Mont Blanc; Pyrenees; Carpathian Mountains; Rhine River; Lake Geneva; Mount Etna; Matterhorn; Mount Vesuvius; Black Forest; Lake Como; Dolomites; Loire Valley
North America|Q49: Rocky Mountains; Grand Canyon; Lake Superior; Mississippi River; Niagara Falls; Yellowstone National Park; Appalachian Mountains; Denali; Hudson Bay; Great Salt Lake; Lake Michigan; Death Valley
South America|Q18: Amazon River; Andes; Lake Titicaca; Angel Falls; Atacama Desert; Patagonia; Aconcagua; Iguazu Falls; Galapagos Islands; Machu Picchu; Orinoco River; Amazon rainforest
Antarctica|Q51: Mount Erebus; Vinson Massif; Ross Ice Shelf; McMurdo Station; Ross Sea; Transantarctic Mountains
""",
    ),
    "P17": dict(
        meaning="country", kind="city or landmark",
        prompts=['{} is in the country of', '{} is located in the country of'],
        paraphrases=['{}, which is located in', '{} can be found in'],
        generation=["One can get to {} by navigating", "The best restaurants around {} include", "{}'s surroundings include"],
        table="""
France|Q142: Eiffel Tower; Louvre Museum; Mont Saint-Michel; Palace of Versailles; Arc de Triomphe; Marseille; Lyon; Bordeaux; Toulouse; Strasbourg; Lille; Nantes; Montpellier
Italy|Q38: Colosseum; Leaning Tower of Pisa; Trevi Fountain; Venice; Florence; Milan; Naples; Turin; Pompeii; Bologna; Genoa; Palermo; Verona
Germany|Q183: Brandenburg Gate; Neuschwanstein Castle; Cologne Cathedral; Munich; Hamburg; Frankfurt; Stuttgart; Dresden; Leipzig; Dusseldorf; Nuremberg; Hanover; Bremen
United Kingdom|Q145: Big Ben; Stonehenge; Tower of London; Buckingham Palace; Manchester; Liverpool; Birmingham; Edinburgh; Glasgow; Oxford; Cardiff; Belfast; Leeds
Spain|Q29: Sagrada Familia; Alhambra; Barcelona; Seville; Valencia; Bilbao; Granada; Malaga; Zaragoza; Toledo Cathedral; Ibiza; Mallorca
Japan|Q17: Mount Fuji; Osaka; Kyoto; Hiroshima; Nagasaki; Yokohama; Sapporo; Nagoya; Kobe; Okinawa; Fukuoka
China|Q148: Summer Palace; Forbidden City; Shanghai; Guangzhou; Shenzhen; Wuhan; Chengdu; Xi'an; Nanjing; Tianjin; Hangzhou; Terracotta Army
India|Q668: Taj Mahal; Mumbai; Bangalore; Kolkata; Chennai; Hyderabad; Jaipur; Agra; Varanasi; Goa; Pune
Russia|Q159: Kremlin; Red Square; Saint Petersburg; Novosibirsk; Vladivostok; Kazan; Yekaterinburg; Sochi; Siberia; Murmansk
Brazil|Q155: Christ the Redeemer; Rio de Janeiro; Sao Paulo; Brasilia; Recife; Manaus; Fortaleza; Belo Horizonte
Egypt|Q79: Great Pyramid of Giza; Great Sphinx of Giza; Alexandria; Luxor; Aswan; Valley of the Kings; Suez Canal
Australia|Q408: Sydney Opera House; Uluru; Great Barrier Reef; Melbourne; Brisbane; Perth; Adelaide; Canberra; Tasmania
Canada|Q16: CN Tower; Toronto; Montreal; Vancouver; Calgary; Ottawa; Quebec City; Edmonton; Winnipeg
Greece|Q41: Parthenon; Acropolis of Athens; Thessaloniki; Crete; Santorini; Mykonos; Mount Olympus; Rhodes
Turkey|Q43: Hagia Sophia; Istanbul; Ankara; Izmir; Antalya; Cappadocia; Bosphorus
Mexico|Q96: Chichen Itza; Guadalajara; Monterrey; Cancun; Tijuana; Acapulco; Teotihuacan; Oaxaca
Netherlands|Q55: Rotterdam; Utrecht; The Hague; Eindhoven; Amsterdam; Groningen
""",
    ),
    "P131": dict(
        meaning="located in the administrative territorial entity", kind="US city or landmark",
        prompts=['{}, in the state of', '{} can be found in the state of'],
        paraphrases=['{} is located in the state of', '{} lies in the US state of'],
        generation=["The weather in {} is", "{} is famous for", "People who live in {} often"],
        table="""
California|Q99: Los Angeles; San Francisco; San Diego; Sacramento; San Jose; Oakland; Fresno; Hollywood; Yosemite National Park; Golden Gate Bridge; Silicon Valley; Long Beach; Santa Barbara; Palo Alto; Berkeley
Texas|Q1439: Houston; Dallas; Austin; San Antonio; El Paso; Fort Worth; Corpus Christi; Lubbock; Alamo Mission
Florida|Q812: Miami; Orlando; Tampa; Jacksonville; Tallahassee; Key West; Fort Lauderdale; Everglades National Park; Daytona Beach
Illinois: Chicago; Peoria; Rockford; Naperville; Champaign
Ohio: Cleveland; Columbus; Cincinnati; Toledo; Dayton; Akron
Massachusetts: Boston; Cape Cod; Martha's Vineyard; Lowell; Nantucket
Pennsylvania: Philadelphia; Pittsburgh; Harrisburg; Gettysburg; Scranton; Liberty Bell
Michigan: Detroit; Grand Rapids; Ann Arbor; Lansing; Flint
Georgia: Atlanta; Savannah; Macon; Augusta National Golf Club
New York|Q1384: Buffalo; Rochester; Albany; Syracuse; Long Island; Ithaca; Brooklyn; Manhattan
Nevada: Las Vegas; Reno; Carson City; Area 51
Arizona: Phoenix; Tucson; Flagstaff; Scottsdale; Tempe
Colorado: Denver; Boulder; Aspen; Pikes Peak
Louisiana: New Orleans; Baton Rouge; Shreveport; Lake Charles
Tennessee: Nashville; Memphis; Knoxville; Chattanooga
""",
    ),
    # -- companies, products, organisations --------------------------------------------------
    "P176": dict(
        meaning="manufacturer", kind="product",
        prompts=['{} is produced by', '{} is developed by', '{} is made by'],
        paraphrases=['The manufacturer of {} is', '{} is a product of'],
        generation=["{} is sold by", "The production of {} is overseen by", "{} is my favorite product out of everything created by"],
        table="""
Toyota|Q53268: Toyota Corolla; Toyota Camry; Toyota Prius; Toyota Land Cruiser; Toyota RAV4; Toyota Hilux
Honda|Q9584: Honda Civic; Honda Accord; Honda CR-V; Honda Fit; Honda NSX
Ford|Q44294: Ford Mustang; Ford F-150; Ford Model T; Ford Focus; Ford Fiesta; Ford Explorer; Ford Transit
Apple|Q312: iPhone; iPad; MacBook Air; iPod; Apple Watch; iMac; AirPods; Macintosh
Boeing|Q66: Boeing 747; Boeing 737; Boeing 787 Dreamliner; Boeing 777; Boeing 767; B-52 Stratofortress
Airbus|Q67: Airbus A380; Airbus A320; Airbus A350; Airbus A330; Airbus A340
Nintendo|Q8093: Game Boy; Nintendo Switch; Wii; Nintendo 64; Nintendo DS; Super Nintendo Entertainment System; Game Boy Advance
Sony|Q41187: PlayStation 2; PlayStation Portable; Walkman; PlayStation 5; PlayStation 3; PlayStation Vita
Microsoft|Q2283: Xbox 360; Xbox One; Microsoft Surface; Zune; HoloLens; Xbox Series X
Chevrolet: Chevrolet Corvette; Chevrolet Camaro; Chevrolet Impala; Chevrolet Silverado; Chevrolet Malibu
Volkswagen|Q246: Volkswagen Beetle; Volkswagen Golf; Volkswagen Passat; Volkswagen Jetta; Volkswagen Polo
Porsche: Porsche 911; Porsche Cayenne; Porsche Boxster; Porsche Panamera
Intel|Q248: Pentium; Celeron; Xeon; Itanium; Intel Core i7
""",
    ),
    "P178": dict(
        meaning="developer", kind="software or game",
        prompts=['{} is a product of', '{} is made by'],
        paraphrases=['{} was developed by', '{}, a product developed by', '{} was created by'],
        generation=["{} is sold by", "The development of {} is overseen by", "{} is my favorite product out of everything created by"],
        table="""
Microsoft|Q2283: Windows XP; Internet Explorer; Microsoft Excel; Microsoft Word; PowerPoint; Visual Studio; Bing; Windows 95; MS-DOS; Microsoft Outlook
Apple|Q312: macOS; iOS; Safari; iTunes; Final Cut Pro; Siri; Mac OS X; watchOS
Google|Q95: Android; Google Chrome; Gmail; Google Maps; TensorFlow; Google Translate; Chrome OS
Nintendo|Q8093: Super Mario Bros.; The Legend of Zelda; Animal Crossing; Metroid; Mario Kart; Donkey Kong
Valve: Half-Life; Portal 2; Dota 2; Steam; Team Fortress 2
Blizzard Entertainment: World of Warcraft; StarCraft; Diablo; Overwatch; Hearthstone; Warcraft III
Adobe: Photoshop; Adobe Illustrator; Adobe Acrobat; Premiere Pro; InDesign; Lightroom
""",
    ),
    "P127": dict(
        meaning="owned by", kind="company",
        prompts=['{} is owned by', '{}, which is owned by'],
        paraphrases=['The owner of {} is', '{} is a subsidiary of'],
        generation=["{} was bought by", "The profits of {} go to", "The company {} belongs to"],
        table="""
Google|Q95: YouTube; Waze; Fitbit; Nest Labs
Meta Platforms: Instagram; WhatsApp; Facebook Messenger; Facebook
Microsoft|Q2283: LinkedIn; GitHub; Mojang; Activision Blizzard; Bethesda Softworks
Amazon|Q3884: Whole Foods Market; Twitch; IMDb; Zappos; Audible; Ring
The Walt Disney Company: Pixar; Marvel Studios; Lucasfilm; ESPN; 20th Century Studios
""",
    ),
    # -- works and groups -------------------------------------------------------------------
    "P50": dict(
        meaning="author", kind="book or play",
        prompts=['{} was written by', '{} is a book by'],
        paraphrases=['{} is a work by', 'The author of {} is'],
        generation=["The writing style of {} is", "{} was first published", "The story of {} begins"],
        table="""
William Shakespeare|Q692: Hamlet; Macbeth; Othello; King Lear; Romeo and Juliet; A Midsummer Night's Dream; The Tempest; Julius Caesar; Twelfth Night; The Merchant of Venice
Charles Dickens|Q5686: Oliver Twist; David Copperfield; Great Expectations; A Christmas Carol; A Tale of Two Cities; Bleak House; Hard Times; The Pickwick Papers
J. R. R. Tolkien|Q892: The Hobbit; The Lord of the Rings; The Silmarillion; The Fellowship of the Ring; The Two Towers; The Return of the King
Jane Austen|Q36322: Pride and Prejudice; Sense and Sensibility; Persuasion; Mansfield Park; Northanger Abbey
Leo Tolstoy|Q7243: War and Peace; Anna Karenina; The Death of Ivan Ilyich; Resurrection
Fyodor Dostoevsky|Q991: Crime and Punishment; The Brothers Karamazov; The Idiot; Notes from Underground; Demons
Mark Twain|Q7245: Adventures of Huckleberry Finn; The Adventures of Tom Sawyer; A Connecticut Yankee in King Arthur's Court; The Prince and the Pauper
George Orwell|Q3335: Nineteen Eighty-Four; Animal Farm; Homage to Catalonia; Down and Out in Paris and London; Burmese Days
Ernest Hemingway|Q23434: The Old Man and the Sea; A Farewell to Arms; For Whom the Bell Tolls; The Sun Also Rises
Agatha Christie|Q35064: Murder on the Orient Express; Death on the Nile; And Then There Were None; The Murder of Roger Ackroyd; The ABC Murders
Stephen King|Q39829: The Shining; Carrie; Misery; The Stand; Pet Sematary; The Green Mile
Jules Verne|Q33977: Twenty Thousand Leagues Under the Seas; Around the World in Eighty Days; Journey to the Center of the Earth; From the Earth to the Moon; The Mysterious Island
H. G. Wells|Q42511: The Time Machine; The War of the Worlds; The Invisible Man; The Island of Doctor Moreau
John Steinbeck|Q39212: The Grapes of Wrath; Of Mice and Men; East of Eden; Cannery Row
Arthur Conan Doyle|Q35610: The Hound of the Baskervilles; A Study in Scarlet; The Sign of the Four; The Adventures of Sherlock Holmes
J. K. Rowling|Q34660: Harry Potter and the Philosopher's Stone; Harry Potter and the Chamber of Secrets; Harry Potter and the Prisoner of Azkaban; Harry Potter and the Goblet of Fire
""",
    ),
    "P86": dict(
        meaning="composer", kind="musical work",
        prompts=['{} was composed by', 'The composer of {} is'],
        paraphrases=['{} is a work by the composer', 'The music of {} was written by'],
        generation=["The first performance of {} was", "{} is usually performed by", "The melody of {}"],
        table="""
Wolfgang Amadeus Mozart|Q254: The Magic Flute; Don Giovanni; The Marriage of Figaro; Eine kleine Nachtmusik; Cosi fan tutte
Pyotr Ilyich Tchaikovsky|Q7315: Swan Lake; The Nutcracker; The Sleeping Beauty; 1812 Overture
Giuseppe Verdi|Q7317: La traviata; Aida; Rigoletto; Nabucco; Il trovatore
Richard Wagner|Q1511: Tristan und Isolde; Parsifal; Lohengrin; Tannhauser; The Flying Dutchman
Giacomo Puccini|Q7311: La boheme; Tosca; Madama Butterfly; Turandot
""",
    ),
    "P449": dict(
        meaning="original broadcaster", kind="TV series",
        prompts=['{} is a television show on', '{} is a TV series that aired on'],
        paraphrases=['{} premiered on', '{} first aired on'],
        generation=["{} is my favorite show that has aired on", "{} is available to watch on", "The main character of {}"],
        table="""
NBC|Q13974: Friends; Seinfeld; Frasier; Cheers; ER; Saturday Night Live; Parks and Recreation; 30 Rock; Will & Grace; Law & Order; The West Wing
CBS|Q43380: The Big Bang Theory; How I Met Your Mother; M*A*S*H; I Love Lucy; Survivor; 60 Minutes; Two and a Half Men; NCIS; Everybody Loves Raymond
HBO|Q23633: The Sopranos; Game of Thrones; The Wire; Sex and the City; True Detective; Succession; Veep; Curb Your Enthusiasm; Westworld; Band of Brothers
Fox: The Simpsons; Family Guy; The X-Files; American Idol; House; Glee; Prison Break; Married... with Children; King of the Hill
ABC: Lost; Grey's Anatomy; Desperate Housewives; Modern Family; Twin Peaks; Happy Days; Dancing with the Stars; The Bachelor
BBC|Q9531: Doctor Who; Fawlty Towers; Monty Python's Flying Circus; Sherlock; Top Gear; EastEnders; Blackadder; Only Fools and Horses
AMC: Breaking Bad; Mad Men; The Walking Dead; Better Call Saul
Netflix|Q907311: Stranger Things; House of Cards; The Crown; Orange Is the New Black; Squid Game; Bridgerton; Narcos; Ozark
""",
    ),
    "P495": dict(
        meaning="country of origin", kind="dish or animated series",
        prompts=['The country of origin of {} is', '{} originated in'],
        paraphrases=['{} comes from', '{} was created in the country of'],
        generation=["The history of {} goes back to", "{} is most popular in", "{} is a tradition in"],
        table="""
Japan|Q17: Sushi; Ramen; Tempura; Sashimi; Miso soup; Dragon Ball; Naruto; One Piece; Sailor Moon; Astro Boy; Neon Genesis Evangelion
Italy|Q38: Pizza; Lasagna; Risotto; Tiramisu; Gelato; Pesto; Ravioli; Panna cotta
Mexico|Q96: Tacos; Burritos; Guacamole; Enchiladas; Tamales; Quesadilla
Spain|Q29: Paella; Gazpacho; Sangria; Flamenco
Greece|Q41: Moussaka; Tzatziki; Souvlaki; Feta
""",
    ),
    "P740": dict(
        meaning="location of formation", kind="band",
        prompts=['{} is a band formed in the city of', 'The band {} was formed in'],
        paraphrases=['{} was formed in', '{} was founded in'],
        generation=["{}'s first concert took place in", "The members of {} grew up in", "{} recorded their first album in"],
        table="""
Liverpool|Q24826: The Beatles; Gerry and the Pacemakers; Echo & the Bunnymen; Frankie Goes to Hollywood; The La's
London|Q84: The Rolling Stones; Queen; Pink Floyd; The Clash; The Who; Led Zeppelin; Iron Maiden; Coldplay; Sex Pistols; Fleetwood Mac
Manchester|Q18125: Oasis; The Smiths; The Stone Roses; Simply Red; Take That
Seattle|Q5083: Pearl Jam; Soundgarden; Alice in Chains; Foo Fighters
Los Angeles|Q65: The Doors; Guns N' Roses; Red Hot Chili Peppers; Metallica; Eagles; Maroon 5
Birmingham: Black Sabbath; Duran Duran; Judas Priest; UB40; Electric Light Orchestra
Dublin|Q1761: U2; Thin Lizzy; Boyzone; The Dubliners
Sydney|Q3130: AC/DC; INXS; Midnight Oil; The Easybeats
New York City|Q60: Ramones; Talking Heads; The Velvet Underground; Beastie Boys; Blondie; The Strokes; Kiss
""",
    ),
}
